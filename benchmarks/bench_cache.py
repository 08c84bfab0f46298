"""Training from the feature cache vs re-encoding every image at every step, same run.

    python benchmarks/bench_cache.py                       # quick embedded world, SigRL head, 3 epochs
    python benchmarks/bench_cache.py --config configs/world_zsl.yaml --set train.epochs=2 --json out.json

Both runs use the same config, seed, head and loss; the only difference is where the
training split's features come from: ``cache.enabled=true`` reads the fp16 memory-mapped
cache, ``cache.enabled=false`` loads, decodes, preprocesses and encodes every training
image with the frozen backbone at every step (validation/test features come from the cache
in both, so evaluation time is the same and is not counted). Reported: the one-off cache
build time, the training time per epoch (median over epochs, from ``metrics.csv``), the
speed-up, and the largest difference between the two runs' metrics (live features are
rounded to float16 like the cache's, so the two runs should agree to float precision).
Goal: >= 10x. The ratio grows with the cost of the backbone: try
``--set backbone.model=ViT-B-16 --set backbone.pretrained=null`` (random weights: same speed)
for the paper's 224-pixel setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUICK = ["data.world.quick=true", "data.world.n_train=512", "data.world.n_val=64", "data.world.n_test=256",
         "backbone.pretrain.quick=true", "train.epochs=3", "train.batch_size=32", "train.early_stop=none"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "world_zsl.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--no-quick", action="store_true", help="do not apply the quick-world overrides")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    import torch

    from sigrl.config import load_config
    from sigrl.experiment import prepare_experiment
    from sigrl.train import train

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sigrl-bench-cache-"))
    overrides = ([] if args.no_quick else QUICK) + args.overrides + [f"cache.dir={work / 'cache'}"]
    base = load_config(args.config, overrides)
    from sigrl.experiment import build_backbone, open_dataset

    dataset, world = open_dataset(base)  # generate the world / pre-train its model outside the timings
    backbone = build_backbone(base, world)
    if world is not None:  # then name them by path: both runs read exactly these files
        overrides += ["data.format=csv", f"data.root={world}"]
    if base.backbone.model == "world":
        overrides += [f"backbone.model={backbone.spec['model']}", f"backbone.pretrained={backbone.spec['pretrained']}"]
    base = load_config(args.config, overrides)

    t0 = time.perf_counter()
    exp = prepare_experiment(base, None, progress=False)  # builds train/val/test caches (and world, model)
    build_s = time.perf_counter() - t0
    n_train = len(exp.train)

    results = {}
    for mode, extra in (("cache", []), ("live", ["cache.enabled=false"])):
        cfg = load_config(args.config, overrides + extra + [f"output={work / mode}"])
        t0 = time.perf_counter()
        res = train(cfg, progress=False)
        wall = time.perf_counter() - t0
        epochs = [r["time/epoch_s"] for r in res.history]
        results[mode] = {"epoch_s": statistics.median(epochs), "epochs_s": epochs, "wall_s": round(wall, 2),
                         "metrics": {k: v for k, v in res.history[-1].items() if k.startswith(("test/", "val/"))},
                         "train_loss": [r["train/loss"] for r in res.history]}
    speedup = results["live"]["epoch_s"] / max(results["cache"]["epoch_s"], 1e-9)
    diffs = {k: abs(results["cache"]["metrics"][k] - results["live"]["metrics"][k]) for k in results["cache"]["metrics"]}
    worst = max(diffs, key=diffs.get) if diffs else None
    out = {
        "config": args.config, "overrides": overrides, "train_images": n_train,
        "backbone": exp.backbone.spec.get("model"), "head": base.head.head_class,
        "threads": torch.get_num_threads(), "device": "cpu" if not torch.cuda.is_available() else "cuda",
        "cache_build_s": round(build_s, 2), "cache": results["cache"], "live": results["live"],
        "speedup_epoch": round(speedup, 1), "max_metric_diff": {"metric": worst, "value": diffs.get(worst)},
    }
    print(f"train images: {n_train}   head: {base.head.head_class}   backbone: {Path(str(out['backbone'])).name}")
    print(f"cache build (train+val+test, once): {build_s:.1f} s")
    print("| mode | epoch (s, median) | run wall (s) | final train loss | test mAP (GZSL or all) |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("cache", "live"):
        r = results[mode]
        m = r["metrics"].get("test/gzsl/mAP", r["metrics"].get("test/mAP"))
        print(f"| {mode} | {r['epoch_s']:.3f} | {r['wall_s']:.1f} | {r['train_loss'][-1]:.4f} | {m:.4f} |")
    print(f"speed-up per epoch: {speedup:.1f}x (goal >= 10x)")
    if worst:
        print(f"largest metric difference cache vs live: {worst} {diffs[worst]:.2g}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
