"""Feature cache: build -> manifest -> memory-mapped reads equal live encoding; refusal of a
cache built for another run; resume after a SIGKILL without reading half-written shards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_shape_image
from sigrl.cache import build_cache, cache_dir_for, ensure_cache, open_cache
from sigrl.data.base import MultiLabelSplit
from sigrl.errors import CheckpointError, DataError

REPO = Path(__file__).resolve().parents[1]
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30)]


def make_split(root: Path, n: int = 10, bad: tuple[int, ...] = ()) -> MultiLabelSplit:
    images, targets = [], []
    for i in range(n):
        name = f"img{i:03d}.png"
        if i in bad:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"not a png at all")
        else:
            write_shape_image(root / name, COLOURS[i % 4], "circle" if i % 2 else "square", seed=i)
        images.append(name)
        targets.append([1 if i % 4 == c else -1 for c in range(4)])
    return MultiLabelSplit(images, np.array(targets), ["red", "green", "blue", "yellow"], root, "toy/train")


def live(backbone, split, rows):
    from sigrl.images import load_image

    px = torch.stack([backbone.preprocess(load_image(split.path(r))) for r in rows])
    return backbone.encode_images(px)


def test_build_read_matches_live(tmp_path, tiny_backbone, capsys):
    split = make_split(tmp_path / "imgs", n=10, bad=(3,))
    cache = ensure_cache(split, tiny_backbone, tmp_path / "cache", shard_size=4, batch_size=3, progress=False)
    err = capsys.readouterr().err
    assert "img003.png" in err and "skipping" in err
    d = cache_dir_for(tmp_path / "cache", split, tiny_backbone)
    m = json.loads((d / "manifest.json").read_text())
    assert m["complete"] and m["dtype"] == "float16" and m["num_images"] == 10
    assert m["fingerprint"] == tiny_backbone.fingerprint
    assert m["backbone"]["checkpoint_sha256"] == tiny_backbone.spec["checkpoint_sha256"]
    assert m["preprocess"]["image_size"] == 64
    assert [s["index"] for s in m["shards"]] == [0, 1, 2]
    assert [f["index"] for f in m["failed"]] == [3]
    assert (cache.num_patches, cache.embed_dim) == (16, 64)
    assert cache.valid.tolist() == [i != 3 for i in range(10)]
    # memory-mapped, and equal to live encoding within fp16 precision
    assert isinstance(cache._local[0], np.memmap)
    rows = [0, 5, 9, 4]
    g, l_ = cache.read(rows)
    g_live, l_live = live(tiny_backbone, split, rows)
    assert g.dtype == torch.float32 and g.shape == (4, 64) and l_.shape == (4, 16, 64)
    torch.testing.assert_close(g, g_live, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(l_, l_live, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(cache.global_features([9, 0]), g[[2, 0]])
    assert float(cache.read([3])[0].abs().sum()) == 0.0  # failed image: zero row, flagged invalid
    # a second call opens the finished cache without encoding anything
    again = ensure_cache(split, tiny_backbone, tmp_path / "cache", on_shard=lambda i: pytest.fail("re-encoded"))
    assert again.manifest == cache.manifest


def test_refuses_mismatched_cache(tmp_path, tiny_backbone, tiny_clip_files):
    from sigrl.backbones import load_backbone

    split = make_split(tmp_path / "imgs", n=5)
    d = tmp_path / "c"
    build_cache(split, tiny_backbone, d, shard_size=4, progress=False)
    other = load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]), preprocess={"resize_size": 80})
    with pytest.raises(CheckpointError, match="fingerprint|preprocessing") as info:
        build_cache(split, other, d, progress=False)
    assert "--rebuild" in str(info.value)
    with pytest.raises(CheckpointError):
        open_cache(d, other, split)
    fewer = split.subset([0, 1, 2])
    with pytest.raises(DataError, match="image list"):
        open_cache(d, tiny_backbone, fewer)
    # rebuild replaces it
    c = build_cache(fewer, tiny_backbone, d, rebuild=True, progress=False)
    assert c.num_images == 3
    # a damaged manifest or shard is refused with what to do
    (d / "manifest.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="rebuild"):
        open_cache(d)


def test_truncated_shard_refused(tmp_path, tiny_backbone):
    split = make_split(tmp_path / "imgs", n=3)
    c = build_cache(split, tiny_backbone, tmp_path / "c", shard_size=4, progress=False)
    p = c.directory / c.manifest["shards"][0]["local"]
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged"):
        open_cache(c.directory, tiny_backbone, split)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, {tests!r})
    from test_cache import make_split
    from sigrl.backbones import load_backbone
    from sigrl.cache import build_cache
    from pathlib import Path
    bb = load_backbone({cfg!r}, {weights!r})
    split = make_split(Path({imgs!r}), n=12)
    def done(i):
        print("shard", i, flush=True)
        time.sleep(0.3)
    build_cache(split, bb, Path({out!r}), shard_size=2, batch_size=2, progress=False, on_shard=done)
    print("finished", flush=True)
""")


def test_resume_after_sigkill(tmp_path, tiny_backbone, tiny_clip_files):
    imgs, out = tmp_path / "imgs", tmp_path / "cache"
    split = make_split(imgs, n=12)
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), cfg=str(tiny_clip_files[0]),
                                weights=str(tiny_clip_files[1]), imgs=str(imgs), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    done = []
    deadline = time.time() + 120
    while len(done) < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("shard"):
            done.append(int(line.split()[1]))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(done) >= 2, proc.stderr.read()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(CheckpointError, match="incomplete"):
        open_cache(out)
    # what a kill in the middle of a write leaves: temp files, and (worst case) a shard
    # array under its final name without the record that marks the shard finished
    (out / ".shard-00005.local.npy.abc.tmp").write_bytes(b"\x93NUMPY half")
    (out / "shard-00005.global.npy").write_bytes(b"\x93NUMPY half")
    built = []
    cache = build_cache(split, tiny_backbone, out, shard_size=99, progress=False, on_shard=built.append)
    finished_before = {int(p.name[6:11]) for p in out.glob("shard-*.json")} - set(built)
    assert set(done) <= finished_before
    assert sorted(built) == sorted(set(range(6)) - finished_before)  # only the unfinished ones
    assert not list(out.glob(".*.tmp"))
    assert cache.shard_size == 2 and cache.manifest["complete"]
    clean = build_cache(split, tiny_backbone, tmp_path / "clean", shard_size=2, progress=False)
    rows = np.arange(12)
    for a, b in zip(cache.read(rows), clean.read(rows)):
        assert torch.equal(a, b)


def test_cli_cache_build_and_info(tmp_path, tiny_clip_files, capsys):
    from sigrl.cli import main
    from test_train import make_dataset

    data = make_dataset(tmp_path / "data", n_train=6, n_val=0, n_test=4, bad=True)
    y = tmp_path / "run.yaml"
    y.write_text(json.dumps({"data": {"format": "csv", "root": str(data)},
                             "backbone": {"model": str(tiny_clip_files[0]), "pretrained": str(tiny_clip_files[1])},
                             "cache": {"dir": str(tmp_path / "c"), "shard_size": 4}}))
    assert main(["cache", "build", str(y), "-q"]) == 1  # built, one unreadable image skipped
    out = capsys.readouterr()
    assert "train: 7 images, 1 failed" in out.out and "test: 4 images, 0 failed" in out.out
    assert "broken.png" in out.err
    d = next((tmp_path / "c").glob("*_train-*"))
    assert main(["cache", "info", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 7
    assert main(["cache", "build", str(y), "-q", "--splits", "test", "--rebuild"]) == 0
    assert main(["cache", "build", str(y), "--splits", "nope"]) == 2
