"""Data-parallel training on CPU: ``torchrun --nproc_per_node N -m sigrl train`` vs one process.

    python benchmarks/bench_distributed.py                  # quick embedded world, adapter head, N = 2
    python benchmarks/bench_distributed.py --nproc 2 --set head.class=sigrl --json out.json

``torchrun`` starts N processes; inside, ``Accelerator(cpu=True)`` sees the torch.distributed
environment and runs MULTI_CPU over gloo. (On this machine ``accelerate launch --cpu
--num_processes 2`` starts a single process with DistributedType.NO — checked — so the CPU
benchmark uses torchrun; on GPUs ``accelerate launch`` works as usual.) Measured, each with fresh caches and ``OMP_NUM_THREADS=1``
per process:

1. ``sigrl cache build``: 1 process vs N (shard i is encoded by rank i mod N, rank 0 merges
   the manifest);
2. ``sigrl train`` from those caches: 1 process vs N (``train.batch_size`` is the global
   batch, split across the processes, so both make the same optimizer steps);
3. the control: 1 process with ``train.batch_size`` / N and ``train.grad_accum`` N — each
   optimizer step sees the same images as one global batch of the N-process run, in N
   micro-batches that compute exactly what the N ranks compute.

The N-process run must equal the control: every value in ``metrics.csv`` (all epochs, all
metrics; ``step`` counts micro-batches and is skipped) within ``--tolerance`` (default
1e-3). Measured 2026-12-05 on the quick world (480 training images: 15 whole batches of 32)
with the shipped model v5, adapter head, ranking loss: **difference 0** (bit for bit: the
all-reduce's (g1 + g2) / 2 and accumulation's g1 / 2 + g2 / 2 are the same floats). Against
one process with whole batches of 32 the runs part after epoch 1 (training loss 1e-2
apart, mAP within 2.5e-3, R@3 0.015; with v4 5.6e-3, 5.9e-3, R@5 0.015), and the control parts from it
identically, so this is not the distributed machinery: it is the batch size. The local
branch's matmuls round differently on 16 rows than on 32 (~1e-7), and the ranking loss
amplifies that — its hinge and its count of violating pairs (the normaliser) change
discontinuously when a pair crosses the margin. Each factor alone stays exact or tiny:
``--set head.options.mode=global`` (no local branch): 0 against whole batches too;
``--set loss.name=full`` (smooth BCE, local + global): 9e-6 in the loss, 4.6e-4 in an mAP.
Wall times include process start-up
(python + torch import, about as long as a tiny run itself), so speed-ups on a small
machine are modest; the check that matters here is that N processes give the same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["data.world.quick=true", "data.world.n_train=512", "data.world.n_val=64", "data.world.n_test=256",
         "backbone.pretrain.quick=true", "train.epochs=3", "train.batch_size=32",
         "head.class=adapter", "head.options={}", "train.lr=0.01",
         "data.max_train_images=480"]  # 15 whole batches of 32 (30 of 16): no last batch dropped


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, proc


def pin(cfg, world, backbone) -> list[str]:
    """Overrides that name the generated world and its model by path, so every process of
    every run reads exactly these files (even if the world generator changes meanwhile)."""
    out = []
    if world is not None:
        out += ["data.format=csv", f"data.root={world}"]
    if cfg.backbone.model == "world":
        out += [f"backbone.model={backbone.spec['model']}", f"backbone.pretrained={backbone.spec['pretrained']}"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "world_zsl.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--no-quick", action="store_true", help="do not apply the quick-world overrides")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if not torchrun:
        raise SystemExit("torchrun not found (it comes with torch)")
    work = Path(tempfile.mkdtemp(prefix="sigrl-bench-dist-"))
    overrides = ([] if args.no_quick else QUICK) + args.overrides
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    # the world and its tiny model are generated once, outside the timings
    sys.path.insert(0, str(REPO))
    from sigrl.config import load_config
    from sigrl.experiment import build_backbone, open_dataset

    cfg = load_config(args.config, overrides)
    dataset, world = open_dataset(cfg)
    backbone = build_backbone(cfg, world)
    overrides += pin(cfg, world, backbone)

    def sets(*extra):
        return [x for o in overrides + list(extra) for x in ("--set", o)]

    one = [sys.executable, "-m", "sigrl"]
    many = [torchrun, "--standalone", "--nproc_per_node", str(args.nproc), "-m", "sigrl"]
    limit = cfg.data.max_train_images
    res: dict = {"nproc": args.nproc, "overrides": overrides,
                 "train_images": min(len(dataset.train), limit) if limit else len(dataset.train)}
    # the control: one process, each global batch in N micro-batches with gradient
    # accumulation -- what the N ranks compute, summed by accumulation instead of all-reduce
    accum = f"1, {args.nproc} micro-batches"
    micro = [f"train.batch_size={cfg.train.batch_size // args.nproc}", f"train.grad_accum={args.nproc}"]
    runs = (("1", one, [], "cache1"), (str(args.nproc), many, [], "cacheN"), (accum, one, micro, "cache1"))
    for i, (name, launcher, extra, cache_name) in enumerate(runs):
        cache = work / cache_name
        wall_c = None  # the control reuses the 1-process cache
        if not cache.exists():
            wall_c, _ = timed(launcher + ["cache", "build", args.config, "-q"] + sets(f"cache.dir={cache}"), env)
        run = work / f"run{i}"
        wall_t, proc = timed(launcher + ["train", args.config, "-q", "-o", str(run)]
                             + sets(f"cache.dir={cache}", *extra), env)
        rows = read_metrics(run / "metrics.csv")
        kind = next((line.split("processes,")[-1].split(",")[0].strip() for line in proc.stderr.splitlines()
                     if "sigrl train:" in line and "process" in line), "?")
        res[name] = {"cache_build_s": None if wall_c is None else round(wall_c, 2), "train_wall_s": round(wall_t, 2),
                     "epoch_s": [r["time/epoch_s"] for r in rows], "setup": kind, "metrics": rows}

    def differences(a: list[dict], b: list[dict]) -> list[tuple[float, str]]:
        return [(abs(ra[k] - rb[k]), f"epoch {int(ra['epoch'])} {k}") for ra, rb in zip(a, b) for k in ra
                if not k.startswith("time/") and k != "step" and k in rb]  # "step" counts micro-batches

    a, b, c = res["1"]["metrics"], res[str(args.nproc)]["metrics"], res[accum]["metrics"]
    same = max(differences(c, b), default=(0.0, ""))       # N processes vs the same batches in one process
    diffs = differences(a, b)                              # N processes vs one process, whole batches
    worst = max(diffs, default=(0.0, ""))
    res["max_metric_diff"] = {"value": same[0], "where": same[1]}
    res["max_metric_diff_whole_batches"] = {"value": worst[0], "where": worst[1]}
    res["match"] = len(b) == len(c) and same[0] <= args.tolerance
    n = str(args.nproc)
    print(f"train images: {res['train_images']}   launcher: torchrun --nproc_per_node {n}")
    print("| processes | setup | cache build wall (s) | train wall (s) | epoch (s, median) |")
    print("|---:|---|---:|---:|---:|")
    for name in ("1", n, accum):
        r = res[name]
        ep = sorted(r["epoch_s"])[len(r["epoch_s"]) // 2]
        build = "–" if r["cache_build_s"] is None else f"{r['cache_build_s']:.1f}"
        print(f"| {name} | {r['setup']} | {build} | {r['train_wall_s']:.1f} | {ep:.3f} |")
    final = {k: v for k, v in b[-1].items() if k.endswith("mAP")}
    print(f"final metrics ({n} processes): " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    print(f"largest difference {n} processes vs 1 process with each batch in {n} micro-batches (what each rank "
          f"computes, gradients summed by accumulation instead of all-reduce) over all epochs and metrics: "
          f"{same[0]:.2g} ({same[1]}); tolerance {args.tolerance:g}: {'MATCH' if res['match'] else 'MISMATCH'}")
    loss = max((d for d, where in diffs if "loss" in where.split()[-1]), default=0.0)
    maps = max((d for d, where in diffs if where.endswith("mAP")), default=0.0)
    print(f"against 1 process with whole batches: largest difference {worst[0]:.2g} ({worst[1]}); of the training "
          f"loss {loss:.2g}; of an mAP {maps:.2g} (batch-size-dependent float rounding, see the docstring)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
