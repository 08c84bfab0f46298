"""`sigrl tag --resume`: killed with SIGKILL in a real subprocess, then resumed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_shape_image


def _cmd(folder, out, cfg, w, fmt="jsonl"):
    return [sys.executable, "-m", "sigrl", "tag", str(folder), "--labels", "dog,cat,red car,ring", "--model", str(cfg),
            "--pretrained", str(w), "--format", fmt, "-o", str(out), "--resume", "--batch-size", "1",
            "--workers", "0", "--top-k", "0"]


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_gives_every_image_once_with_the_same_scores(tiny_clip_files, tmp_path):
    cfg, w = tiny_clip_files
    folder = tmp_path / "imgs"
    n = 48  # enough that a kill after the 4th record comes well before the end on a fast machine
    for i in range(n):
        write_shape_image(folder / f"{i:02d}.png", ((15 * i) % 256, (200 - 10 * i) % 256, 90),
                          "circle" if i % 2 else "square", seed=i)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref.jsonl"
    subprocess.run(_cmd(folder, ref, cfg, w), check=True, env=env, capture_output=True, timeout=300)
    expected = {r["image"]: r for r in _records(ref)}
    assert len(expected) == n

    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_cmd(folder, out, cfg, w), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 4):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = _records(out)
    assert 4 <= len(before) < n, "the run was killed too late to test resuming"
    with open(out, "ab") as fh:  # what a kill inside a write would leave: a torn last line
        fh.write(b'{"image": "' + str(folder / "zz").encode() + b'", "sco')
    done = subprocess.run(_cmd(folder, out, cfg, w), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    got = _records(out)  # every line parses: the torn one was dropped
    assert sorted(r["image"] for r in got) == sorted(expected)  # each image exactly once
    for r in got:
        e = expected[r["image"]]
        assert [t["label"] for t in r["tags"]] == [t["label"] for t in e["tags"]]
        assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(r["tags"], e["tags"]))


def test_csv_resume_drops_a_torn_tail(tiny_clip_files, tmp_path):
    from sigrl.cli import main

    cfg, w = tiny_clip_files
    folder = tmp_path / "imgs"
    for i in range(4):
        write_shape_image(folder / f"{i}.png", (50 * i, 90, 90), seed=i)
    out = tmp_path / "out.csv"
    args = _cmd(folder, out, cfg, w, "csv")[3:]
    assert main(args) == 0
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:-2]) + lines[-2][:10])  # the last image half written, torn
    assert main(args) == 0
    assert out.read_text() == full


def test_resume_refuses_other_labels_scores_or_threshold(tiny_clip_files, tmp_path, capsys):
    """A --resume'd OUTPUT keeps the settings of the run that wrote it (OUTPUT.sigrl.json):
    other labels, score kind or threshold are refused and the file is left as it was; the
    same settings resume (nothing to add)."""
    from sigrl.cli import main

    cfg, w = tiny_clip_files
    folder = tmp_path / "imgs"
    for i in range(3):
        write_shape_image(folder / f"{i}.png", (70 * i, 90, 200), seed=i)
    out = tmp_path / "out.jsonl"
    args = _cmd(folder, out, cfg, w)[3:]
    assert main(args) == 0
    full = out.read_bytes()
    side = json.loads((tmp_path / "out.jsonl.sigrl.json").read_text())
    assert side["labels"] == ["dog", "cat", "red car", "ring"] and side["scores"] == "independent"
    capsys.readouterr()
    i = args.index("--labels")
    for change, word in [(args[:i + 1] + ["dog,cat"] + args[i + 2:], "labels"),
                         (args + ["--scores", "softmax"], "scores"),
                         (args + ["--threshold", "0.3"], "threshold")]:
        assert main(change) == 2
        err = capsys.readouterr().err
        assert word in err and "new --output" in err
        assert out.read_bytes() == full
    assert main(args) == 0
    assert out.read_bytes() == full
