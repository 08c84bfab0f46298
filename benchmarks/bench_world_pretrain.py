"""Rerun the shipped world model's pre-training on a shortened schedule and compare its
loss curve, step by step, with the one recorded in the manifest.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_pretrain.py              # first 100 steps
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_pretrain.py --steps 300 --out /tmp/wp

The rerun uses the manifest's recipe (``ShipSpec`` from the manifest: corpus, seeds, lr
schedule, batch order) and stops after ``--steps`` steps of the same schedule, so its
10-step mean losses line up with the manifest's ``loss_every_10``. CPU float arithmetic
differs a little with the thread count and the torch build, so the curves agree closely
but not bit for bit; the check is a mean absolute difference of the 10-step means below
``--tolerance`` (default 0.05). Drawing the 100,000-image corpus takes about a minute
on one core before the first step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from sigrl.world.ship import ShipSpec, read_manifest, train_world_model

    manifest = read_manifest()
    spec = ShipSpec.from_dict(manifest["spec"])
    out = args.out or tempfile.mkdtemp(prefix="bench-world-pretrain-")
    t0 = time.time()
    info = train_world_model(out, spec, max_steps=args.steps, threads=args.threads, quiet=True)
    losses = info["losses"]
    ours = [float(np.mean(losses[i : i + 10])) for i in range(0, len(losses) - len(losses) % 10, 10)]
    ref = manifest["loss_every_10"][: len(ours)]
    diff = np.abs(np.asarray(ours) - np.asarray(ref))
    print(f"{'steps':>7} {'rerun':>8} {'manifest':>9} {'|diff|':>7}")
    for i, (a, b) in enumerate(zip(ours, ref)):
        if i % max(1, len(ours) // 10) == 0 or i == len(ours) - 1:
            print(f"{10 * (i + 1):>7} {a:8.4f} {b:9.4f} {abs(a - b):7.4f}")
    ok = bool(diff.mean() < args.tolerance)
    print(f"\nmean |diff| {diff.mean():.4f}, max {diff.max():.4f} over {len(ours)} ten-step means "
          f"({'agrees' if ok else 'DIFFERS'}, tolerance {args.tolerance}); {info['train_seconds']:.0f} s training, "
          f"{time.time() - t0:.0f} s in all; run in {out}")
    print(json.dumps({"steps": args.steps, "mean_abs_diff": round(float(diff.mean()), 5),
                      "max_abs_diff": round(float(diff.max()), 5), "agrees": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
