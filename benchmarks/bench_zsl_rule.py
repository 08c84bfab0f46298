"""What the ZSL rule changes: the unseen labels scored in their own pass (the rule of
sigrl eval, sigrl bench, the trainer and the demo; BiAM/MKT/SigRL's evaluation) vs their
columns cut out of the all-label (GZSL) score matrix (what bench/demo did before).

    python benchmarks/bench_zsl_rule.py sigrl-demo/runs/sigrl_zsl sigrl-demo/runs/adapter_zsl [--clip]

Prints, per run (and for plain CLIP matching with --clip, on the first run's backbone and
dataset), ZSL mAP and F1@3 under both rules, in %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sigrl.checkpoint import load_run  # noqa: E402
from sigrl.config import config_from_dict  # noqa: E402
from sigrl.evaluate import zero_shot_scores  # noqa: E402
from sigrl.experiment import prepare_experiment  # noqa: E402
from sigrl.prompts import load_prompts  # noqa: E402
from sigrl.report import prf_map  # noqa: E402
from sigrl.scorer import Scorer  # noqa: E402


def both_rules(scorer, part) -> tuple[dict, dict]:
    zsl, gzsl = zero_shot_scores(scorer, part)
    cols = [part.labels.index(u) for u in part.unseen]
    targets = np.asarray(part.targets)[:, cols]
    return prf_map(zsl.numpy(), targets), prf_map(gzsl.numpy()[:, cols], targets)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--clip", action="store_true", help="also plain CLIP matching (both combine rules)")
    args = ap.parse_args(argv)
    print("| scorer | ZSL mAP, own pass | ZSL mAP, cut from GZSL | ZSL F1@3, own pass | ZSL F1@3, cut |\n"
          "|---|---:|---:|---:|---:|")
    exp = None
    for run_dir in args.runs:
        run = load_run(run_dir)
        cfg = config_from_dict(run.config, str(Path(run_dir) / "config.yaml"))
        exp = prepare_experiment(cfg, None, need_train=False, progress=False)
        scorers = [Scorer.from_loaded(run, exp.backbone)]
        if args.clip and run_dir == args.runs[0]:
            scorers += [Scorer.clip(exp.backbone, load_prompts(cfg.prompts.name), combine=c, name=f"clip ({c})")
                        for c in ("l2", "softmax")]
        for scorer in scorers:
            own, cut = both_rules(scorer, exp.test)
            print(f"| {scorer.name} | {100 * own['mAP']:.1f} | {100 * cut['mAP']:.1f} | {100 * own['F1@3']:.1f} | "
                  f"{100 * cut['F1@3']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
