"""`sigrl demo --quick --full` end to end: a valid results.json, a tag grid, every section and row."""
from __future__ import annotations

import json

from pathlib import Path

import yaml
from PIL import Image

from sigrl.cli import main
from sigrl.demo import HEAD_TUNED, SPML_RUNS


def test_quick_demo_writes_valid_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIGRL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--full", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seconds"] > 0
    for section in ("zsl", "gzsl"):
        assert {"random", "colour_oracle", "clip", "adapter", "sigrl"} <= set(results[section])
        for entry in results[section].values():
            for key in ("map", "f1@3", "f1@5"):
                assert 0.0 <= entry[key] <= 1.0, (section, key, entry)
    assert set(results["spml"]) == {name for name, _ in SPML_RUNS}  # --full: every single-positive loss
    # EPR and ROLE get k = the world's mean labels per image (objects 2..6, one label each)
    for name in ("epr", "role"):
        saved = yaml.safe_load((Path(results["spml"][name]["run"]) / "config.yaml").read_text())
        assert saved["loss"]["options"]["expected_num_pos"] == 4.0
    # each zero-shot head trains with the lr and options chosen for it (HEAD_TUNED), e.g. the
    # SigRL head's train.lr=3e-2 lands in its saved config as train: {lr: 0.03}
    for name, overrides in HEAD_TUNED.items():
        saved = yaml.safe_load((Path(results["zsl"][name]["run"]) / "config.yaml").read_text())
        for item in overrides:
            key, value = item.split("=", 1)
            node = saved
            for part in key.split("."):
                node = node[part]
            assert node == value if isinstance(node, str) else float(node) == float(value), (name, key, node)
    assert set(results["probe"]) == {"colour", "shape"} and all(0 <= v <= 1 for v in results["probe"].values())
    assert {"shape_oracle", "bag_oracle", "clip_global", "clip_local"} <= set(results["zsl"])
    assert results["stages"] and all(v >= 0 for v in results["stages"].values())
    assert all(0.0 <= v["map"] <= 1.0 for v in results["spml"].values())
    assert results["partial"] and all(0.0 <= v["map"] <= 1.0 for v in results["partial"].values())
    # every trained row names its run, and its number is what `sigrl eval RUN` computes
    from sigrl.evaluate import evaluate_run

    for section in ("zsl", "gzsl"):
        for name in ("adapter", "sigrl"):
            entry = results[section][name]
            again = evaluate_run(entry["run"], progress=False, write=False)["metrics"]
            assert entry["map"] == again[f"{section}/mAP"] and entry["f1@3"] == again[f"{section}/F1@3"]
    for entry in list(results["spml"].values()) + list(results["partial"].values()):
        assert entry["map"] == evaluate_run(entry["run"], progress=False, write=False)["metrics"]["mAP"]
    with Image.open(out / "tags.png") as im:
        assert im.size[0] > 400
    printed = capsys.readouterr().out
    assert "ZSL mAP" in printed and "colour_oracle" in printed
    # a second run in the same folder trains again from scratch instead of refusing
    assert main(["demo", "--quick", "--output", str(out)]) == 0
