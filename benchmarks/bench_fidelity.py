"""The measured effect of each difference from the reference code, on the embedded world.

Same world seed, same budget for every row (docs/fidelity.md, "Measured effect"):

    CLIP matching     combine="l2" (reference) vs combine="softmax" (ours); no training
    SigRL head        preset="reference" vs preset="ours"
    ranking loss      normalize="violating" (BiAM/MKT) vs "pairs" (ours), reference preset
    regime            frozen backbone + cache vs backbone.finetune.blocks=2 (the paper's)

    python benchmarks/bench_fidelity.py                       # seed 0, 2,000 images x 3 epochs
    python benchmarks/bench_fidelity.py --images 500 --epochs 1 --rows clip,preset   # a quick look

Prints a markdown table (ZSL / GZSL mAP and F1@3 in %, seconds per row) and writes
``bench-fidelity/results.json``. Each trained row's numbers are those of `sigrl eval RUN`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sigrl.bench import evaluate_zero_shot  # noqa: E402
from sigrl.config import load_config  # noqa: E402
from sigrl.experiment import build_backbone, features_root, open_dataset  # noqa: E402
from sigrl.paths import CONFIGS_DIR  # noqa: E402
from sigrl.prompts import load_prompts  # noqa: E402
from sigrl.scorer import Scorer  # noqa: E402
from sigrl.train import train  # noqa: E402

REF = "head.options.preset=reference"
TRAINED = {
    "preset": [("SigRL, reference preset", [REF]),
               ("SigRL, ours (softmax rule, k-NN GMC, normalised tokens)", ["head.options.preset=ours"])],
    # the reference preset named in each row (configs/world_zsl.yaml itself uses preset "ours")
    "ranking": [("SigRL ref., ranking / violating pairs (BiAM/MKT)", [REF, "loss.options.normalize=violating"]),
                ("SigRL ref., ranking / all pairs (ours)", [REF, "loss.options.normalize=pairs"])],
    "regime": [("SigRL ref., frozen backbone + cache", [REF]),
               ("SigRL ref., last 2 blocks fine-tuned (paper's regime)", [REF, "backbone.finetune.blocks=2"])],
}


def row(metrics: dict, seconds: float, run: str | None = None) -> dict:
    out = {"zsl_map": metrics["zsl"]["mAP"], "zsl_f1@3": metrics["zsl"].get("F1@3"),
           "gzsl_map": metrics["gzsl"]["mAP"], "gzsl_f1@3": metrics["gzsl"].get("F1@3"), "seconds": seconds}
    if run:
        out["run"] = run
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=2000, help="training images per run (the demo's SigRL budget)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows", default="clip,preset,ranking,regime")
    ap.add_argument("--output", default="bench-fidelity")
    args = ap.parse_args(argv)
    out = Path(args.output)
    common = [f"data.world.seed={args.seed}", f"data.seed={args.seed}", f"train.seed={args.seed}",
              f"data.max_train_images={args.images}", f"train.epochs={args.epochs}"]
    wanted = args.rows.split(",")
    cfg = load_config(CONFIGS_DIR / "world_zsl.yaml", common + [f"output={out / 'runs' / 'x'}"])
    dataset, root = open_dataset(cfg)
    backbone = build_backbone(cfg, root)
    results: dict = {"seed": args.seed, "budget": f"{args.images} images x {args.epochs} epochs", "rows": {}}
    if "clip" in wanted:
        for name, combine in (("CLIP matching, L2 rule (reference)", "l2"), ("CLIP matching, softmax rule (ours)", "softmax")):
            t0 = time.time()
            scorer = Scorer.clip(backbone, load_prompts(cfg.prompts.name), combine=combine)
            metrics = evaluate_zero_shot(scorer, dataset, features_root(cfg), progress=False)
            results["rows"][name] = row(metrics, time.time() - t0)
            print(f"{name}: {results['rows'][name]}", file=sys.stderr, flush=True)
    for group in ("preset", "ranking", "regime"):
        if group not in wanted:
            continue
        for i, (name, extra) in enumerate(TRAINED[group]):
            run_dir = out / "runs" / f"{group}{i}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.time()
            run_cfg = load_config(CONFIGS_DIR / "world_zsl.yaml", common + extra + [f"output={run_dir}"])
            res = train(run_cfg, progress=False)
            best = res.best_metrics
            metrics = {s: {k.split("/", 2)[2]: v for k, v in best.items() if k.startswith(f"test/{s}/")}
                       for s in ("zsl", "gzsl")}
            results["rows"][name] = row(metrics, time.time() - t0, str(run_dir))
            print(f"{name}: {results['rows'][name]}", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nembedded world, seed {args.seed}, {results['budget']}; values in %; "
          "ZSL = the unseen labels scored on their own\n")
    print("| variant | ZSL mAP | ZSL F1@3 | GZSL mAP | GZSL F1@3 | seconds |\n|---|---:|---:|---:|---:|---:|")
    for name, r in results["rows"].items():
        print(f"| {name} | {100 * r['zsl_map']:.1f} | {100 * r['zsl_f1@3']:.1f} | {100 * r['gzsl_map']:.1f} | "
              f"{100 * r['gzsl_f1@3']:.1f} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
