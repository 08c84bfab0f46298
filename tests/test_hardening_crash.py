"""Crash points and many processes: ``sigrl tag --output``, two independent feature-cache
builds of one folder, and ``sigrl train`` killed with SIGKILL then resumed (more in
tests/test_cache.py, tests/test_train.py, tests/test_distributed.py).

A run that is killed must not destroy the results file of an earlier run, and two runs
writing the same file at once must leave one complete result, never a mix. Two cache
builds of one folder take turns and encode each shard once. A training killed at any
point resumes to the metrics of an uninterrupted run."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_shape_image

REPO = Path(__file__).resolve().parents[1]


def test_killed_run_keeps_previous_output_and_concurrent_runs_do_not_interleave(tiny_clip_files, tmp_path):
    slow = tmp_path / "slow"
    slow.mkdir()
    big = slow / "big0000.jpg"  # slow to decode; hard links so every file is read again
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(big, quality=90)
    for i in range(1, 1000):
        os.link(big, slow / f"big{i:04d}.jpg")
    few = tmp_path / "few"
    for i in range(3):
        write_shape_image(few / f"f{i}.png", seed=i)
    out = tmp_path / "tags.csv"
    out.write_text("image,scores,rank,label,score,error\nprevious,independent,1,x,1.0,\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def cmd(folder):
        return [sys.executable, "-m", "sigrl", "tag", str(folder), "--labels", "a,b,c", "--model",
                str(tiny_clip_files[0]), "--pretrained", str(tiny_clip_files[1]), "--format", "csv",
                "--output", str(out), "--batch-size", "2", "--top-k", "3"]

    previous = out.read_text()
    slow_run = subprocess.Popen(cmd(slow), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    fast_run = subprocess.Popen(cmd(few), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    partial = out.with_name(f"tags.csv.partial-{slow_run.pid}")
    seen = set()
    try:
        deadline = time.time() + 240
        while time.time() < deadline and slow_run.poll() is None:
            # whoever is writing, OUTPUT is only ever the previous file or a complete result
            text = out.read_text()
            seen.add("previous" if text == previous else "fast" if "f2.png" in text else text)
            if fast_run.poll() is not None and partial.is_file() and len(partial.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        assert fast_run.wait(timeout=60) == 0, fast_run.stderr.read()[-2000:]
        assert slow_run.poll() is None, "the slow run finished before it could be killed"
        slow_run.send_signal(signal.SIGKILL)
        slow_run.wait()
    finally:
        for p in (slow_run, fast_run):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert seen <= {"previous", "fast"}, seen
    rows = list(csv.DictReader(out.open(newline="")))
    assert sorted({Path(r["image"]).name for r in rows}) == ["f0.png", "f1.png", "f2.png"]
    assert len(rows) == 9  # the concurrent run's complete result, nothing of the killed one
    kept = partial.read_text().splitlines()  # the killed run's rows so far, for the user to see
    assert kept[0] == "image,scores,rank,label,score,error" and len(kept) >= 4
    assert all("big" in line for line in kept[1:-1])


# ====================================================================== two cache builds on one folder

BUILD_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from pathlib import Path
    from sigrl.backbones import load_backbone
    from sigrl.cache import ensure_cache
    from sigrl.data.base import MultiLabelSplit
    n, go = {n}, Path(sys.argv[1]) if sys.argv[1] else None
    split = MultiLabelSplit([f"img{{i:03d}}.png" for i in range(n)], -np.ones((n, 2)), ["a", "b"],
                            Path({imgs!r}), "toy/train")
    bb = load_backbone({cfg!r}, {weights!r})
    print("start", flush=True)
    def done(i):
        print("shard", i, flush=True)
        deadline = time.time() + 120
        while go is not None and not go.exists() and time.time() < deadline:
            time.sleep(0.05)  # this build stays unfinished until the test says go
    cache = ensure_cache(split, bb, Path({root!r}), shard_size=1, batch_size=1, progress=False, on_shard=done)
    print("finished", cache.manifest["complete"], flush=True)
""")


def test_two_cache_builds_on_one_folder_encode_each_shard_once(tiny_clip_files, tiny_backbone, tmp_path):
    from sigrl.cache import cache_dir_for, ensure_cache, open_cache
    from sigrl.data.base import MultiLabelSplit

    n, imgs, root, go = 8, tmp_path / "imgs", tmp_path / "cache", tmp_path / "go"
    for i in range(n):
        write_shape_image(imgs / f"img{i:03d}.png", (30 * i, 200, 30), "circle" if i % 2 else "square", seed=i)
    script = BUILD_SCRIPT.format(n=n, imgs=str(imgs), cfg=str(tiny_clip_files[0]), weights=str(tiny_clip_files[1]),
                                 root=str(root))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    seen: dict[str, list[str]] = {"first": [], "second": [], "first err": [], "second err": []}

    def start(name, go_file):
        proc = subprocess.Popen([sys.executable, "-c", script, go_file], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        readers = [threading.Thread(target=lambda f=f, k=k: seen[k].extend(line.strip() for line in f), daemon=True)
                   for f, k in ((proc.stdout, name), (proc.stderr, f"{name} err"))]
        for r in readers:
            r.start()
        return proc, readers

    def wait_for(what, proc, test):
        deadline = time.time() + 120
        while not test():
            assert proc.poll() is None and time.time() < deadline, (what, seen)
            time.sleep(0.05)

    first, r1 = start("first", str(go))  # finishes shard 0, then holds until `go` exists
    second, r2 = None, []
    try:
        wait_for("first build under way", first, lambda: "shard 0" in seen["first"])
        second, r2 = start("second", "")
        # the second build is inside ensure_cache: waiting for the first, or (without a lock) encoding
        wait_for("second build under way", second,
                 lambda: seen["second err"] or any(l.startswith("shard") for l in seen["second"]))
        go.touch()
        codes = [first.wait(timeout=120), second.wait(timeout=120)]
        for r in r1 + r2:
            r.join(10)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0], seen
    assert not any("Traceback" in l for l in seen["first err"] + seen["second err"]), seen
    assert seen["first"][-1] == seen["second"][-1] == "finished True", seen
    # the second waited for the first and said so in one line
    assert len(seen["second err"]) == 1 and "another process" in seen["second err"][0], seen
    shards = {k: [int(l.split()[1]) for l in seen[k] if l.startswith("shard")] for k in ("first", "second")}
    # every shard encoded exactly once over both processes: no duplicate work, none missing
    assert sorted(shards["first"] + shards["second"]) == list(range(n)), shards
    split = MultiLabelSplit([f"img{i:03d}.png" for i in range(n)], -np.ones((n, 2)), ["a", "b"], imgs, "toy/train")
    d = cache_dir_for(root, split, tiny_backbone)
    assert not list(d.glob(".*.tmp"))
    shared = open_cache(d, tiny_backbone, split)
    assert [s["index"] for s in shared.manifest["shards"]] == list(range(n)) and not shared.failed
    alone = ensure_cache(split, tiny_backbone, tmp_path / "alone", shard_size=1, progress=False)
    rows = np.arange(n)
    for a, b in zip(shared.read(rows), alone.read(rows)):
        assert torch.equal(a, b)


# ====================================================================== SIGKILL during training, then --resume


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory, tiny_clip_files):
    """A tiny dataset, a 5-epoch run config (head with dropout, so the result depends on the
    RNG state that resume must restore) and the uninterrupted run of that config."""
    from test_train import make_dataset

    tmp = tmp_path_factory.mktemp("killed_training")
    data = make_dataset(tmp / "data", n_train=16, n_val=4, n_test=6, seed=5)
    config = tmp / "run.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "data": {"format": "csv", "root": str(data)},
        "backbone": {"model": str(tiny_clip_files[0]), "pretrained": str(tiny_clip_files[1])},
        "head": {"class": "adapter", "options": {"dropout": 0.3}}, "loss": "ranking",
        "train": {"epochs": 5, "batch_size": 4, "lr": 0.01, "seed": 7},
        "cache": {"dir": str(tmp / "cache"), "shard_size": 8}}))
    full = tmp / "full"
    done = subprocess.run(train_cmd(config, full), env=train_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return config, full


def train_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def train_cmd(config: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sigrl", "train", str(config), "-q", "-o", str(run), *extra]


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in csv.DictReader(f)]


def _frozen(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (state T in /proc), or the process is gone."""
    try:
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for t in Path(f"/proc/{pid}/task").iterdir()]
    except (OSError, IndexError):
        return True
    return all(s in "TtZX" for s in states)


def kill_when(proc: subprocess.Popen, condition) -> None:
    """SIGKILL ``proc`` at a moment ``condition()`` holds: poll, freeze the process with
    SIGSTOP, wait until it has really stopped (the signal is asynchronous: a process can
    write on for a while after it is sent), check again (it may have moved on while we
    looked), kill or let it go on."""
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGSTOP)
            stop_by = time.time() + 30
            while not _frozen(proc.pid) and time.time() < stop_by:
                time.sleep(0.0005)
            if condition():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    pytest.fail("the training ended before the kill point was reached")


def _nonempty_dir(p: Path) -> bool:
    try:
        return any(p.iterdir())
    except OSError:
        return False


KILL_POINTS = {
    # after two finished epochs, in the third (its training, evaluation or the files after it)
    "mid-run": lambda run: (run / "state" / "COMPLETE").is_file() and len(metric_rows(run)) >= 2
    and not (run / "state.tmp").exists() and not (run / "state.old").exists(),
    # accelerate.save_state half way through writing run/state.tmp (an earlier state exists)
    "state half-written": lambda run: (run / "state" / "COMPLETE").is_file() and (run / "state.tmp").is_dir()
    and not (run / "state.tmp" / "COMPLETE").exists(),
    # the new state renamed into place, the previous one (run/state.old) not yet deleted
    "after the swap, before the cleanup": lambda run: (run / "state" / "COMPLETE").is_file()
    and not (run / "state.tmp").exists() and _nonempty_dir(run / "state.old"),
}
# The last window (a few ms of rmtree) is too short to hit reliably by polling on a busy
# machine: that case is killed at "mid-run" and then given the leftover the narrow kill
# leaves, a complete earlier state in run/state.old next to the complete run/state.
EMULATED = {"after the swap, before the cleanup": "mid-run"}


@pytest.mark.parametrize("point", [
    "mid-run",
    "state half-written",
    "after the swap, before the cleanup",
])
def test_training_killed_then_resumed_matches_uninterrupted(point, train_setup, tmp_path):
    from safetensors.torch import load_file

    config, full = train_setup
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(config, run), env=train_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        kill_when(proc, lambda: KILL_POINTS[EMULATED.get(point, point)](run))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if point in EMULATED:
        shutil.copytree(run / "state", run / "state.old")
    assert KILL_POINTS[point](run)  # what the kill left on disk
    expected = metric_rows(full)
    before = metric_rows(run)  # never torn: a prefix of the uninterrupted history
    assert 1 <= len(before) < len(expected) and before == expected[: len(before)]
    resumed = subprocess.run(train_cmd(config, run, "--resume"), env=train_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "no saved state" not in resumed.stderr  # it continued from the saved epoch, not from scratch
    # epochs finished before the kill are kept, the rest recomputed: all equal the uninterrupted run
    assert metric_rows(run) == expected
    with open(run / "metrics.csv", newline="") as f:  # kept rows: the first session, the rest: the resumed one
        sessions = [int(r["time/session"]) for r in csv.DictReader(f)]
    kept = sessions.count(1)  # the epochs in the saved state; the one being saved at the kill is redone
    assert sessions == [1] * kept + [2] * (len(expected) - kept) and len(before) - 1 <= kept <= len(before)
    assert 1 <= kept < len(expected)  # a run that skipped loading the state would be all session 1
    assert json.loads((run / "eval.json").read_text()) == json.loads((full / "eval.json").read_text())
    a, b = load_file(str(run / "head.safetensors")), load_file(str(full / "head.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "state" / "COMPLETE").is_file()
    assert not (run / "state.tmp").exists() and not (run / "state.old").exists()
