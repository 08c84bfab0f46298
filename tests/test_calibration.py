"""Calibration: Platt maps, thresholds, the file round trip, and `sigrl calibrate`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_shape_image
from sigrl.calibration import (Calibration, best_f1_threshold, ece, fit, precision_threshold, read_thresholds,
                               sigmoid, write_thresholds)
from sigrl.errors import UsageError
from sigrl.tagging import Tagger


def _synthetic(n=3000, c=4, seed=0):
    rng = np.random.default_rng(seed)
    a_true, b_true = np.array([8.0, 12.0, 5.0, 9.0]), np.array([-2.0, -4.0, -1.0, -3.0])
    s = rng.normal(0, 0.3, (n, c))
    y = rng.random((n, c)) < sigmoid(a_true * s + b_true)
    return s, np.where(y, 1, -1).astype(np.int8)


def test_fit_recovers_calibrated_probabilities():
    s, t = _synthetic()
    labels = ["a", "b", "c", "d"]
    cal = fit(s, t, labels, default=(100.0, -5.0))
    assert cal.info["ece_after"] < 0.02 < cal.info["ece_before"]
    s2, t2 = _synthetic(seed=1)
    assert ece(cal.probabilities(s2, labels), (t2 == 1).astype(float)) < 0.03
    assert all("a" in cal.labels[l] and "threshold" in cal.labels[l] for l in labels)


def test_label_never_seen_falls_back_to_the_global_map():
    s, t = _synthetic()
    cal = fit(s, t, ["a", "b", "c", "d"], default=(1.0, 0.0))
    assert cal.map_for("never seen") == (cal.a, cal.b)
    p = cal.probabilities(np.array([[0.1, 0.1]]), ["a", "never seen"])
    assert p[0, 1] == pytest.approx(sigmoid(cal.a * 0.1 + cal.b))


def test_calibration_file_round_trip(tmp_path):
    s, t = _synthetic()
    cal = fit(s, t, ["a", "b", "c", "d"], default=(1.0, 0.0), scorer={"backbone": "x"})
    cal.save(tmp_path / "cal.json")
    back = Calibration.load(tmp_path / "cal.json")
    assert back.to_dict() == json.loads(json.dumps(cal.to_dict()))
    assert np.array_equal(back.probabilities(s, ["a", "b", "c", "d"]), cal.probabilities(s, ["a", "b", "c", "d"]))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(UsageError, match="not a sigrl calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_thresholds_best_f1_and_precision():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([1, 1, 0, 1, 0, 0])
    t, f1 = best_f1_threshold(p, y)
    assert 0.5 < t <= 0.6 and f1 == pytest.approx(2 * 3 / (2 * 3 + 1))
    t, prec = precision_threshold(p, y, 1.0)
    assert t == 0.8 and prec == 1.0


def test_thresholds_csv_round_trip(tmp_path):
    write_thresholds(tmp_path / "t.csv", {"dog": 0.25, "red, car": 0.5})
    assert read_thresholds(tmp_path / "t.csv") == {"dog": 0.25, "red, car": 0.5}
    (tmp_path / "bad.csv").write_text("dog,1.5\n")
    with pytest.raises(UsageError, match="between 0 and 1"):
        read_thresholds(tmp_path / "bad.csv")


def _tiny_dataset(root):
    rows = ["image,labels"]
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for i in range(24):
        colour = "red" if i % 2 else "blue"
        shape = "circle" if i % 3 else "square"
        write_shape_image(root / "images" / f"{i}.png", colours[colour], shape, seed=i)
        rows.append(f"images/{i}.png,{colour} {shape}")
    (root / "labels.txt").write_text("red circle\nred square\nblue circle\nblue square\n")
    (root / "val.csv").write_text("\n".join(rows[:13]) + "\n")
    (root / "test.csv").write_text("\n".join([rows[0]] + rows[13:]) + "\n")
    (root / "train.csv").write_text("\n".join(rows[:13]) + "\n")


def test_sigrl_calibrate_writes_a_file_tag_reads(tiny_clip_files, tmp_path, capsys):
    from sigrl.cli import main

    cfg, w = map(str, tiny_clip_files)
    data = tmp_path / "data"
    _tiny_dataset(data)
    out = tmp_path / "cal.json"
    code = main(["calibrate", str(data), "--model", cfg, "--pretrained", w, "-o", str(out), "--workers", "0",
                 "--features", str(tmp_path / "feats")])
    text = capsys.readouterr().out
    assert code == 0
    assert "val: ECE before" in text and "test: ECE before" in text and "macro-F1" in text
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 1000
    assert read_thresholds(tmp_path / "cal.thresholds.csv").keys() == {"red circle", "red square", "blue circle",
                                                                       "blue square"}
    cal = Calibration.load(out)
    tagger = Tagger(["red circle", "sunset"], model=cfg, pretrained=w, calibration=out)
    g, l = tagger.backbone.encode_images(torch.rand(2, 3, 64, 64))
    expected = cal.probabilities(tagger.raw_scores(g, l).numpy(), ["red circle", "sunset"])
    assert np.allclose(tagger.score_features(g, l).numpy(), expected, atol=1e-6)
    code = main(["tag", str(data / "images"), "--labels", "red circle,sunset", "--model", cfg, "--pretrained", w,
                 "--calibration", str(out), "--format", "jsonl", "--top-k", "0", "--workers", "0"])
    assert code == 0
    with pytest.raises(UsageError, match="another scorer"):
        Tagger(["red circle"], model=cfg, pretrained=w, calibration=out, mode="global")
