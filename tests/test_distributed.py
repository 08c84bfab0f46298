"""Two processes on CPU (torchrun -> Accelerate MULTI_CPU over gloo) train to the same
metrics as one process, building the feature cache together (shards split by rank).

``train.batch_size`` is the global batch (split across processes), the last incomplete
batch is dropped and module initialisation does not depend on how the cache was built,
so with a head without dropout the two runs agree up to float rounding; we allow 1e-3 on
every metric against one process with whole batches (the local branch rounds differently
on fewer rows, and the ranking loss's hinge can amplify that), and demand equality with one
process that sees each batch as per-rank micro-batches (benchmarks/bench_distributed.py).
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
    # exact: one process fed each global batch of 4 as 2 micro-batches of 2 (gradient
    # accumulation) computes what the two ranks compute, (g1 + g2) / 2 == g1 / 2 + g2 / 2 in floats
    train(load_config(y, [f"output={tmp_path / 'micro'}", f"cache.dir={tmp_path / 'c1'}", "train.batch_size=2",
                          "train.grad_accum=2"]), progress=False)
    c = read_metrics(tmp_path / "micro" / "metrics.csv")
    assert len(c) == 2
    for rc, rb in zip(c, b):
        assert {k: v for k, v in rc.items() if k != "step"} == {k: v for k, v in rb.items() if k != "step"}
    # the cache of the 2-process run was built by both ranks and merged by rank 0
    manifests = list((tmp_path / "c2").glob("*/manifest.json"))
    assert manifests and all(json.loads(m.read_text())["complete"] for m in manifests)


def _two_process_config(tmp_path: Path, tiny_clip_files, **train) -> Path:
    data = make_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=6, seed=5)
    y = tmp_path / "run.yaml"
    y.write_text(json.dumps({
        "data": {"format": "csv", "root": str(data)},
        "backbone": {"model": str(tiny_clip_files[0]), "pretrained": str(tiny_clip_files[1])},
        "head": {"class": "adapter"}, "loss": "ranking",
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, **train},
        "cache": {"dir": str(tmp_path / "cache"), "shard_size": 8}}))
    return y


@pytest.mark.skipif(torchrun() is None, reason="torchrun is not installed (torch.distributed launcher)")
@pytest.mark.parametrize("victim", [1, 0])
def test_one_rank_killed_stops_the_run_and_names_the_rank(victim, tmp_path, tiny_clip_files):
    import re
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    # long enough that the run is still training when a worker is killed
    y = _two_process_config(tmp_path, tiny_clip_files, epochs=1000)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "sigrl", "train", str(y),
                             "-q", "-o", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    workers = []
    try:
        deadline = time.time() + 240
        while not (run / "state" / "COMPLETE").is_file():  # an epoch is done: both ranks are training
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK")]
        ranks = {int(p.environ()["RANK"]): p for p in workers}
        assert sorted(ranks) == [0, 1]
        ranks[victim].send_signal(signal.SIGKILL)
        # the whole run must stop, not hang in a collective with the dead rank
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for p in workers:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
    assert proc.returncode != 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    assert len(read_metrics(run / "metrics.csv")) < 1000  # stopped early, not trained to the end
    # torchrun's failure summary names the killed rank as the root cause
    root = err[err.index("Root Cause"):]
    assert re.search(r"rank\s*:\s*(\d+)", root).group(1) == str(victim), err[-3000:]
    assert "SIGKILL" in root or "Signal 9" in root, err[-3000:]


@pytest.mark.skipif(torchrun() is None, reason="torchrun is not installed (torch.distributed launcher)")
def test_an_error_in_a_two_process_run_names_the_rank(tmp_path, tiny_clip_files):
    y = _two_process_config(tmp_path, tiny_clip_files, batch_size=5)  # not a multiple of 2 processes
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "sigrl", "train", str(y), "-q",
                          "-o", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode != 0
    for rank in (0, 1):
        lines = [l for l in two.stderr.splitlines() if l.startswith(f"sigrl train: rank {rank} of 2: error: ")]
        assert len(lines) == 1 and "train.batch_size=5" in lines[0], two.stderr[-3000:]
    assert "sigrl/train.py" not in two.stderr  # one line per rank, no traceback of ours


@pytest.mark.skipif(torchrun() is None, reason="torchrun is not installed (torch.distributed launcher)")
def test_em_apl_pseudo_labels_cover_every_image_with_two_processes(tmp_path, tiny_clip_files):
    """EM+APL assigns its pseudo negatives from scores of the whole training set, also when
    each process sees half of it: every round labels floor(0.9 * U_c / rounds) unobserved
    entries of each class c (U_c counted over all training images), in 1 and 2 processes."""
    import numpy as np
    from safetensors.torch import load_file

    from sigrl.config import load_config
    from sigrl.data.csvdata import load_csv_dataset
    from sigrl.data.observed import single_positive
    from sigrl.train import train

    data = make_dataset(tmp_path / "data", n_train=24, n_val=0, n_test=6, seed=8, unseen=False)
    y = tmp_path / "run.yaml"
    y.write_text(json.dumps({
        "data": {"format": "csv", "root": str(data), "observed": "single_positive", "seed": 2},
        "backbone": {"model": str(tiny_clip_files[0]), "pretrained": str(tiny_clip_files[1])},
        "head": {"class": "adapter"}, "loss": {"name": "em_apl", "options": {"warmup_epochs": 1}},
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.01},
        "cache": {"dir": str(tmp_path / "cache"), "shard_size": 8}}))
    train(load_config(y, [f"output={tmp_path / 'one'}"]), progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "sigrl", "train", str(y), "-q",
                          "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    observed = single_positive(load_csv_dataset(data).train.targets, seed=2)
    unobserved = (observed == 0).sum(0)
    rounds = 3 - 1  # epochs 1 and 2 (0-based) each label a share
    expected = rounds * np.floor(0.9 * unobserved / rounds)
    for run in ("one", "two"):
        state = load_file(str(next((tmp_path / run / "state").glob("model*.safetensors"))))
        mask = state["loss.pseudo_mask"].numpy()
        assert mask.shape == observed.shape
        assert not (mask & (observed != 0)).any()  # only unobserved entries get pseudo labels
        np.testing.assert_array_equal(mask.sum(0), expected, err_msg=run)
    a, b = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    for ra, rb in zip(a, b):
        for k in ra:
            assert abs(ra[k] - rb[k]) <= TOLERANCE, (k, ra[k], rb[k])
