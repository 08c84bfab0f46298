"""`sigrl tag` and `sigrl.Tagger` on real image files, good and bad."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sigrl.cli import main
from sigrl.tagging import Tagger


def _tag(args, capsys):
    code = main(["tag", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output_sorted_unique_and_exit_zero(tiny_clip_files, image_dir, capsys):
    cfg, w = map(str, tiny_clip_files)
    code, out, err = _tag([str(image_dir), "--labels", "dog, cat,dog,,rouge vif ✓,red car", "--model", cfg,
                           "--pretrained", w, "--format", "json", "--top-k", "10"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 3
    for r in results:
        labels = [t["label"] for t in r["tags"]]
        scores = [t["score"] for t in r["tags"]]
        assert sorted(labels) == sorted(["dog", "cat", "rouge vif ✓", "red car"])  # merged, unicode kept
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= s <= 1 for s in scores)
        assert r["scores"] == "independent" and r["error"] is None


def test_softmax_scores_sum_to_one_and_are_named(tiny_clip_files, image_dir, capsys):
    cfg, w = map(str, tiny_clip_files)
    code, out, err = _tag([str(image_dir), "--labels", "dog,cat,red car", "--model", cfg, "--pretrained", w,
                           "--format", "jsonl", "--top-k", "0", "--scores", "softmax"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["scores"] == "softmax" and len(r["tags"]) == 3
        assert abs(sum(t["score"] for t in r["tags"]) - 1) < 1e-4


def test_formats_carry_the_same_records(tiny_clip_files, image_dir, tmp_path, capsys):
    cfg, w = map(str, tiny_clip_files)
    (tmp_path / "bad.png").write_text("no image")
    common = [str(image_dir), str(tmp_path / "bad.png"), "--labels", "dog,cat,red car", "--model", cfg,
              "--pretrained", w, "--top-k", "2", "--workers", "0"]
    outs = {}
    for fmt in ("json", "jsonl", "csv"):
        code, out, err = _tag([*common, "--format", fmt], capsys)
        assert code == 1
        outs[fmt] = out
    from_json = {r["image"]: r for r in json.loads(outs["json"])}
    from_jsonl = {r["image"]: r for r in map(json.loads, outs["jsonl"].splitlines())}
    assert from_json == from_jsonl and len(from_json) == 4
    rows = list(csv.DictReader(io.StringIO(outs["csv"])))
    assert set(rows[0]) == {"image", "scores", "rank", "label", "score", "error"}
    for image, rec in from_json.items():
        mine = [r for r in rows if r["image"] == image]
        if rec["error"]:
            assert len(mine) == 1 and mine[0]["error"] == rec["error"] and not mine[0]["label"]
        else:
            assert [(r["label"], float(r["score"])) for r in mine] == [(t["label"], t["score"]) for t in rec["tags"]]
            assert all(r["scores"] == "independent" for r in mine)


def test_top_k_zero_lists_every_label(tiny_backbone, image_dir):
    labels = [f"word {i}" for i in range(12)]
    res = Tagger(labels, backbone=tiny_backbone).tag([image_dir], top_k=0)
    assert all(sorted(l for l, _ in r.tags) == sorted(labels) for r in res)


def test_per_label_thresholds_file(tiny_backbone, image_dir, tmp_path):
    tagger = Tagger(["a", "b", "c"], backbone=tiny_backbone)
    (tmp_path / "t.csv").write_text("label,threshold\na,0\nb,1\n")
    from sigrl.calibration import read_thresholds

    cut = read_thresholds(tmp_path / "t.csv")
    for r in tagger.tag([image_dir], top_k=0, thresholds=cut, threshold=0.0):
        names = [l for l, _ in r.tags]
        assert "a" in names and "b" not in names and "c" in names  # c: the global --threshold 0


def test_bad_inputs_are_skipped_and_others_tagged(tiny_clip_files, image_dir, tmp_path, capsys):
    cfg, w = map(str, tiny_clip_files)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    trunc = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:200])
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")
    Image.new("I;16", (300, 20)).save(tmp_path / "wide16.png")  # valid: 16-bit, very wide
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")         # valid: 1x1
    inputs = [str(image_dir), *(str(tmp_path / n) for n in ["empty.png", "text.jpg", "trunc.png", "bomb.png",
                                                             "wide16.png", "one.png", "missing.png"])]
    code, out, err = _tag([*inputs, "--labels", "a,b", "--model", cfg, "--pretrained", w, "--format", "csv"], capsys)
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    tagged = {r["image"] for r in rows if not r["error"]}
    assert len({r["image"] for r in rows if r["error"]}) == 5
    assert len(tagged) == 5 and any(t.endswith("wide16.png") for t in tagged) and any(t.endswith("one.png") for t in tagged)
    for name, reason in [("empty.png", "empty"), ("text.jpg", "not an image"), ("trunc.png", "truncated"),
                         ("bomb.png", "bomb"), ("missing.png", "not found")]:
        assert any(name in line and reason in line for line in err.splitlines()), (name, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--labels", " , ,"], "no labels"),
    (["--labels", "a", "--model", "ViT-Nope-1"], "unknown open_clip model"),
    (["--labels", "a", "--top-k", "-1"], "--top-k"),
    (["--labels", "a", "--resume", "--format", "json", "-o", "x.json"], "--resume"),
    (["--labels", "a", "--resume"], "--resume needs --output"),
])
def test_usage_errors_exit_2_with_one_line(args, message, image_dir, tiny_clip_files, capsys):
    extra = [] if "--model" in args else ["--model", str(tiny_clip_files[0]), "--pretrained", str(tiny_clip_files[1])]
    code, out, err = _tag([str(image_dir), *args, *extra], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_long_label_is_truncated_with_warning(tiny_backbone, image_dir, capsys):
    long_label = " ".join(["enormous"] * 120)
    tagger = Tagger(["dog", long_label], backbone=tiny_backbone)
    results = tagger.tag([image_dir], top_k=2)
    assert all(len(r.tags) == 2 for r in results)
    assert "truncated" in capsys.readouterr().err


def test_threshold_and_global_only(tiny_backbone, image_dir):
    tagger = Tagger(["a", "b", "c", "d"], backbone=tiny_backbone, mode="global", scores="softmax")
    res = tagger.tag([image_dir], top_k=4, threshold=0.25)
    for r in res:
        assert all(s >= 0.25 for _, s in r.tags)
    # softmax scores of 4 labels sum to 1, so at least one passes 0.25 and not all four unless equal
    assert all(1 <= len(r.tags) <= 4 for r in res)
    full = Tagger(["a", "b", "c", "d"], backbone=tiny_backbone, mode="global").tag([image_dir], top_k=0)
    cut = float(np.median([s for r in full for _, s in r.tags]))
    kept = Tagger(["a", "b", "c", "d"], backbone=tiny_backbone, mode="global").tag([image_dir], top_k=0, threshold=cut)
    assert [[t for t in r.tags if t[1] >= cut] for r in full] == [r.tags for r in kept]


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "sigrl", "--help"], capture_output=True, text=True)
    for verb in ["tag", "train", "eval", "bench", "data", "demo"]:
        assert verb in out.stdout
