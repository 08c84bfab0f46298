"""`sigrl bench` core: scores from the feature cache equal live tagging; run tables."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sigrl.bench import bench_runs, evaluate_zero_shot
from sigrl.experiment import split_part
from sigrl.scorer import Scorer, score_part
from sigrl.cli import main
from sigrl.data.csvdata import load_csv_dataset
from sigrl.prompts import load_prompts
from sigrl.tagging import Tagger

from conftest import write_shape_image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


@pytest.fixture
def shapes_dataset(tmp_path):
    root = tmp_path / "shapes"
    rows = {"train": [], "test": []}
    i = 0
    for split, n in (("train", 6), ("test", 9)):
        for k in range(n):
            colour = list(COLOURS)[k % 3]
            shape = ["square", "circle"][k % 2]
            rel = f"images/{split}/{i:03d}.png"
            write_shape_image(root / rel, COLOURS[colour], shape, seed=i)
            rows[split].append(f"{rel},{colour} {shape}")
            i += 1
    labels = [f"{c} {s}" for c in COLOURS for s in ["square", "circle"]]
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    (root / "unseen.txt").write_text("green circle\nblue square\n")
    for split in rows:
        (root / f"{split}.csv").write_text("image,labels\n" + "\n".join(rows[split]) + "\n")
    return root


def test_cached_scores_match_live_tagging(shapes_dataset, tiny_backbone, tmp_path):
    ds = load_csv_dataset(shapes_dataset)
    scorer = Scorer.clip(tiny_backbone, load_prompts("photo"), combine="softmax")  # Tagger's rule
    part = split_part(ds.test, tiny_backbone, tmp_path / "cache", unseen=ds.unseen, progress=False)
    (scores,) = score_part(scorer, part, [part.labels])
    scores = scores.numpy()
    tagger = Tagger(ds.test.labels, backbone=tiny_backbone, prompts="photo", scores="softmax")
    live = np.stack([s.numpy() for _, s, _ in tagger.iter_scores([ds.test.path(i) for i in range(len(ds.test))])])
    assert scores.shape == live.shape == (9, 6)
    np.testing.assert_allclose(scores, live, atol=2e-3)  # cache stores fp16 features
    res = evaluate_zero_shot(scorer, ds, tmp_path / "cache", plots_dir=tmp_path / "plots", progress=False)
    assert set(res) == {"zsl", "gzsl"} and 0 <= res["zsl"]["mAP"] <= 1
    assert "P@5" not in res["zsl"] and "P@5" in res["gzsl"]  # 2 unseen labels: k=5 does not apply
    assert (tmp_path / "plots" / "clip-per-label-ap.png").is_file()


def test_bench_runs_tables(tmp_path, capsys):
    for name, prop, m in [("an10", 0.1, 0.5), ("an50", 0.5, 0.7), ("sst10", 0.1, 0.6)]:
        d = tmp_path / name
        d.mkdir()
        method = "sst" if name.startswith("sst") else None
        (d / "eval.json").write_text(json.dumps({"metrics": {"mAP": m}, "config": {
            "data": {"proportion": prop}, "method": {"name": method}, "loss": {"name": "an"}}}))
    tables, problems = bench_runs("partial", [tmp_path / n for n in ["an10", "an50", "sst10"]], tmp_path / "out")
    assert problems == []
    rows = tables["test mAP"]
    assert rows["an"] == {"10%": 0.5, "50%": 0.7, "average": pytest.approx(0.6)}
    assert rows["sst"]["10%"] == 0.6
    assert "| an | 50.0 | 70.0 | 60.0 |" in (tmp_path / "out" / "results.md").read_text()
    code = main(["bench", "spml", str(tmp_path / "nope")])
    assert code == 2 and "not a run directory" in capsys.readouterr().err
