"""Report tables and plots: values come from the metrics, files are real and readable."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from sigrl.report import plot_per_label_ap, plot_pr_curves, prf_map, write_report


def test_prf_map_row():
    # 2 images, 3 labels: the third ranks perfectly, the first two are inverted.
    targets = np.array([[1, -1, 1], [-1, 1, -1]])
    scores = np.array([[0.0, 1.0, 0.9], [1.0, 0.0, 0.1]])
    assert prf_map(scores[:, 2:], targets[:, 2:])["mAP"] == 1.0  # image 0 first for label 3
    res = prf_map(scores, targets)
    assert res["mAP"] == (0.5 + 0.5 + 1.0) / 3
    assert "P@5" not in res                 # k larger than the label count is left out
    assert res["P@3"] == (2 + 1) / (2 * 3)  # k = C: every positive is predicted (2 in image 0, 1 in image 1)


def test_write_report_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random((50, 6))
    targets = np.where(rng.random((50, 6)) < 0.3, 1, -1)
    tables = {"ZSL": {"clip": {"mAP": 0.25, "F1@3": 0.1}}, "GZSL": {"clip": {"mAP": 0.5}}}
    paths = write_report(tmp_path, "t", tables, {"empty classes": "count as AP 0"})
    md = paths["md"].read_text()
    assert "count as AP 0" in md and "| clip | 10.0 | 25.0 |" in md
    assert json.loads(paths["json"].read_text())["tables"]["GZSL"]["clip"]["mAP"] == 0.5
    labels = [f"l{i}" for i in range(6)]
    from sigrl.metrics import average_precision_per_class

    p1 = plot_per_label_ap(average_precision_per_class(scores, targets), labels, {"l4", "l5"}, tmp_path / "ap.png")
    p2 = plot_pr_curves(scores, targets, labels, tmp_path / "pr.png", n=2)
    for p in (p1, p2):
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
