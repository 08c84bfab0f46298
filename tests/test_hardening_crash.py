"""Crash points and many processes: ``sigrl tag --output``, two independent feature-cache
builds of one folder, and ``sigrl train`` killed with SIGKILL then resumed (more in
tests/test_cache.py, tests/test_train.py, tests/test_distributed.py).

A run that is killed must not destroy the results file of an earlier run, and two runs
writing the same file at once must leave one complete result, never a mix. Two cache
builds of one folder take turns and encode each shard once. A training killed at any
point resumes to the metrics of an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
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
    out.write_text("image,rank,label,score\nprevious,1,x,1.0\n")
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
    assert kept[0] == "image,rank,label,score" and len(kept) >= 4
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
