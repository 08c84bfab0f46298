"""Time ``sigrl demo`` as a new user runs it: an empty cache, a fresh output folder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_demo.py            # the default demo (goal <= 120 s)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_demo.py --full     # every row (goal <= 15 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_demo.py --quick    # the CI check (goal <= 60 s)

Runs ``python -m sigrl demo`` in a subprocess with ``SIGRL_CACHE`` pointing at a new empty
folder (world generation and the feature cache included; the shipped model, no
pre-training), then prints the wall time, the per-stage times from results.json and the
machine's load average (the figures depend on what else runs on the cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = {**os.environ, "SIGRL_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "sigrl", "demo", "--seed", str(args.seed), "--output", str(tmp / "demo")]
    cmd += ["--quick"] if args.quick else (["--full"] if args.full else [])
    load0 = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    results = json.loads((tmp / "demo" / "results.json").read_text())
    print(proc.stdout)
    print("stages:")
    for name, sec in results.get("stages", {}).items():
        print(f"  {sec:7.1f} s  {name}")
    goal = 60 if args.quick else (900 if args.full else 120)
    print(f"\nwall {wall:.1f} s (goal <= {goal} s: {'met' if wall <= goal else 'MISSED'}); "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; output {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
