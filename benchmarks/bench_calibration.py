"""`sigrl calibrate` on the world's validation split, judged on its test split.

    OMP_NUM_THREADS=1 python benchmarks/bench_calibration.py [--world ROOT] [--model CONFIG WEIGHTS]

Runs ``sigrl calibrate ROOT --split val --eval-split test`` with the shipped world model
(plain CLIP matching, independent scores) and prints what it prints: the fitted map, the
expected calibration error (15 bins, every image x label pair) before (the default map)
and after on val and test, and the F1 of the per-label best-F1 thresholds against one
global threshold on test (macro over labels, and micro). Also the mAP of the per-label
scores against the old per-image softmax scores on test (a per-label map cannot change
a label's ranking of images, so mAP is the same before and after calibration).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world")
    ap.add_argument("--model", nargs=2, metavar=("CONFIG", "WEIGHTS"))
    args = ap.parse_args()
    import numpy as np
    from sklearn.metrics import average_precision_score

    from sigrl.cli import main as sigrl
    from sigrl.commands.calibrate import load_split
    from sigrl.world import WorldSpec, ensure_world
    from sigrl.world.ship import shipped_paths

    root = Path(args.world) if args.world else ensure_world(WorldSpec(seed=0))
    cfg, weights = args.model or shipped_paths()  # the world model shipped in the package
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cal.json"
        feats = Path(tmp) / "feats"
        code = sigrl(["calibrate", str(root), "--split", "val", "--eval-split", "test", "--model", str(cfg),
                      "--pretrained", str(weights), "-o", str(out), "--features", str(feats), "--workers", "0",
                      "--batch-size", "64"])
        assert code == 0
        info = json.loads(out.read_text())["info"]
        from sigrl.tagging import Tagger

        test = load_split(str(root), "test")
        y = test.targets == 1
        maps = {}
        for kind in ("independent", "softmax"):
            t = Tagger(test.labels, model=str(cfg), pretrained=str(weights), features=feats, batch_size=64,
                       scores=kind)
            S = np.stack([s.numpy() for _, s, _ in t.iter_scores([test.path(i) for i in range(len(test))])])
            maps[kind] = float(np.mean([average_precision_score(y[:, j], S[:, j]) for j in range(y.shape[1])
                                        if y[:, j].any()]))
    print(f"summary: test ECE {info['eval_ece_before']:.4f} -> {info['eval_ece_after']:.4f}; "
          f"macro-F1 per-label {info['eval_f1_per_label']['macro_f1']:.4f} vs global "
          f"{info['eval_f1_global']['macro_f1']:.4f}; micro-F1 per-label {info['eval_f1_per_label']['micro_f1']:.4f} "
          f"vs global {info['eval_f1_global']['micro_f1']:.4f}; test mAP independent {maps['independent']:.4f} "
          f"vs softmax {maps['softmax']:.4f}")


if __name__ == "__main__":
    main()
