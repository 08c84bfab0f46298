"""Crash points and many processes for ``sigrl tag --output`` (the cache and the trainer
have their own: tests/test_cache.py, tests/test_train.py, tests/test_distributed.py).

A run that is killed must not destroy the results file of an earlier run, and two runs
writing the same file at once must leave one complete result, never a mix."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
