"""Two processes on CPU (torchrun -> Accelerate MULTI_CPU over gloo) train to the same
metrics as one process, building the feature cache together (shards split by rank).

``train.batch_size`` is the global batch (split across processes), the last incomplete
batch is dropped and module initialisation does not depend on how the cache was built,
so with a head without dropout the two runs agree up to float summation order; we allow
1e-3 on every metric (as benchmarks/bench_distributed.py: a near-tie of two scores can
flip their order and move an AP slightly; losses agree to about 1e-5).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import make_dataset

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-3


def torchrun() -> str | None:
    exe = Path(sys.executable).with_name("torchrun")
    return str(exe) if exe.is_file() else shutil.which("torchrun")


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != "" and not k.startswith("time/")}
                for row in csv.DictReader(f)]


@pytest.mark.skipif(torchrun() is None, reason="torchrun is not installed (torch.distributed launcher)")
def test_two_processes_match_one(tmp_path, tiny_clip_files):
    data = make_dataset(tmp_path / "data", n_train=20, n_val=6, n_test=8, seed=3)
    y = tmp_path / "run.yaml"
    y.write_text(json.dumps({
        "data": {"format": "csv", "root": str(data)},
        "backbone": {"model": str(tiny_clip_files[0]), "pretrained": str(tiny_clip_files[1])},
        "head": {"class": "adapter"}, "loss": "ranking",
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.01},
        "cache": {"shard_size": 4}}))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    from sigrl.config import load_config
    from sigrl.train import train

    train(load_config(y, [f"output={tmp_path / 'one'}", f"cache.dir={tmp_path / 'c1'}"]), progress=False)
    two = subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "sigrl", "train", str(y), "-q",
                          "-o", str(tmp_path / "two"), "--set", f"cache.dir={tmp_path / 'c2'}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    assert len(a) == len(b) == 2 and a[0].keys() == b[0].keys()
    for ra, rb in zip(a, b):
        for k in ra:
            assert abs(ra[k] - rb[k]) <= TOLERANCE, (k, ra[k], rb[k])
    # the cache of the 2-process run was built by both ranks and merged by rank 0
    manifests = list((tmp_path / "c2").glob("*/manifest.json"))
    assert manifests and all(json.loads(m.read_text())["complete"] for m in manifests)
