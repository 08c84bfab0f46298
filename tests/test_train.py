"""Trainer end to end on a small generated dataset with a tiny random backbone: the loss
falls, the run directory loads back, resume after an interruption ends with the same
metrics as an uninterrupted run, prompt tuning and label recovery run, the CLI works."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sigrl.config import load_config

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30),
           "purple": (140, 40, 180), "cyan": (40, 200, 210), "orange": (240, 130, 20)}
UNSEEN = ["purple", "cyan", "orange"]


def make_image(path: Path, colours: list[str], rng) -> None:
    from PIL import Image, ImageDraw

    img = Image.fromarray((rng.random((64, 64, 3)) * 50 + 100).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for name in colours:
        x, y = rng.integers(0, 40, size=2)
        s = int(rng.integers(14, 24))
        d.rectangle((int(x), int(y), int(x) + s, int(y) + s), fill=COLOURS[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_dataset(root: Path, n_train=24, n_val=8, n_test=12, seed=0, unseen=True, bad=False) -> Path:
    """A CSV dataset of coloured squares; labels = the colours present."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rows = []
        for i in range(n):
            k = int(rng.integers(1, 3))
            colours = [names[j] for j in rng.choice(len(names), size=k, replace=False)]
            rel = f"images/{split}/{i:03d}.png"
            make_image(root / rel, colours, rng)
            rows.append((rel, "|".join(colours)))
        if bad and split == "train":
            (root / "images/train/broken.png").write_bytes(b"garbage")
            rows.append(("images/train/broken.png", "red"))
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "labels"])
            w.writerows(rows)
    (root / "labels.txt").write_text("\n".join(names) + "\n")
    if unseen:
        (root / "unseen.txt").write_text("\n".join(UNSEEN) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shapes"), bad=True)


def config(tmp_path: Path, dataset: Path, tiny_clip_files, *overrides: str, name="run"):
    base = [f"data.format=csv", f"data.root={dataset}", f"backbone.model={tiny_clip_files[0]}",
            f"backbone.pretrained={tiny_clip_files[1]}", f"cache.dir={tmp_path.parent / 'feature-cache'}",
            f"output={tmp_path / name}", "head.class=adapter", "loss.name=ranking", "train.epochs=3",
            "train.batch_size=8", "train.lr=0.01", "eval.batch_size=16", "prompts.name=photo"]
    return load_config(None, base + list(overrides))


def test_train_zero_shot_writes_loadable_run(tmp_path, dataset, tiny_clip_files):
    from sigrl.checkpoint import load_run
    from sigrl.evaluate import evaluate_run
    from sigrl.train import train

    cfg = config(tmp_path, dataset, tiny_clip_files, "train.epochs=4")
    res = train(cfg, progress=False)
    losses = [r["train/loss"] for r in res.history]
    assert len(res.history) == 4 and losses[-1] < losses[0]
    assert res.early_stop == "val/zsl/mAP" and res.skipped_images == 1
    row = res.history[-1]
    for key in ("val/zsl/mAP", "test/zsl/mAP", "test/zsl/F1@3", "test/gzsl/P@5", "test/gzsl/mAP"):
        assert 0.0 <= row[key] <= 1.0, key
    run_dir = Path(cfg.output)
    for f in ("head.safetensors", "run.json", "config.yaml", "metrics.csv", "eval.json", "state/COMPLETE"):
        assert (run_dir / f).is_file(), f
    with open(run_dir / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    run = load_run(run_dir)
    assert run.labels == ["red", "green", "blue", "yellow"]
    assert run.context is None and not run.head.training
    assert run.info["head_class"] == "AdapterHead" and run.metrics["epoch"] == res.best_epoch
    # `sigrl eval` recomputes the saved head's test metrics from the cache
    result = evaluate_run(run_dir, progress=False, write=False)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["epoch"] == res.best_epoch
    for k, v in saved["metrics"].items():
        assert result["metrics"][k] == pytest.approx(v, abs=1e-5), k


def test_resume_matches_uninterrupted(tmp_path, dataset, tiny_clip_files):
    from sigrl.train import train

    # dropout makes the result depend on the torch RNG state, which resume must restore
    extra = ("head.options.dropout=0.3",)
    full = train(config(tmp_path, dataset, tiny_clip_files, *extra, name="full"), progress=False)
    cfg = config(tmp_path, dataset, tiny_clip_files, *extra, name="cut")
    first = train(cfg, stop_after=1, progress=False)
    assert len(first.history) == 1
    with pytest.raises(Exception, match="--resume"):
        train(cfg, progress=False)  # refuses to overwrite a run with a saved state
    resumed = train(cfg, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    # it resumed: epoch 1 was not trained again (kept with its first session and timing)
    assert first.epochs_trained == 1 and resumed.epochs_trained == 2 and full.epochs_trained == 3
    assert [r["time/session"] for r in resumed.history] == [1, 2, 2]
    assert resumed.history[0] == first.history[0]
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)  # bit for bit
    from safetensors.torch import load_file

    a = load_file(str(Path(full.run_dir) / "head.safetensors"))
    b = load_file(str(Path(resumed.run_dir) / "head.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prompt_tuning_and_spml(tmp_path, tiny_clip_files, tmp_path_factory):
    from sigrl.checkpoint import load_run
    from sigrl.train import train

    data = make_dataset(tmp_path_factory.mktemp("spml"), n_train=16, n_val=0, n_test=8, unseen=False, seed=1)
    cfg = config(tmp_path, data, tiny_clip_files, "data.observed=single_positive", "data.val_fraction=0.25",
                 "loss.name=an", "prompts.tune=true", "prompts.n_ctx=2", "train.epochs=2")
    res = train(cfg, progress=False)
    assert res.early_stop == "val/mAP" and "test/mAP" in res.history[-1]
    run = load_run(cfg.output)
    assert run.context.shape == (2, 64) and run.info["n_ctx"] == 2
    # the context was trained (moved from its N(0, 0.02) start)
    g = torch.Generator().manual_seed(cfg.train.seed)
    assert not torch.allclose(run.context, torch.randn(2, 64, generator=g) * 0.02)


def test_sigrl_head(tmp_path, dataset, tiny_clip_files):
    from sigrl.checkpoint import load_run
    from sigrl.train import train

    cfg = config(tmp_path, dataset, tiny_clip_files, "head.class=sigrl", "train.epochs=1",
                 "data.max_train_images=12")
    res = train(cfg, progress=False)
    assert res.history[-1]["step"] == 1  # 12 images, batches of 8, the incomplete last one dropped
    run = load_run(cfg.output)
    assert run.info["head_class"] == "SigRLHead"
    assert "test/zsl/mAP" in res.history[-1]


def test_label_recovery_method(tmp_path, dataset, tiny_clip_files):
    from sigrl.train import train

    extra = ("method.name=sst_counted", "loss.name=full", "data.observed=single_positive", "train.epochs=2")
    res = train(config(tmp_path, dataset, tiny_clip_files, *extra, name="full"), progress=False)
    assert len(res.history) == 2
    # the recovered labels are part of the saved state: resume gives the same run
    cfg = config(tmp_path, dataset, tiny_clip_files, *extra, name="cut")
    train(cfg, stop_after=1, progress=False)
    again = train(cfg, resume=True, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in h]  # noqa: E731
    assert strip(again.history) == strip(res.history)


def test_unknown_early_stop_metric(tmp_path, dataset, tiny_clip_files):
    from sigrl.errors import ConfigError
    from sigrl.train import train

    with pytest.raises(ConfigError, match="val/zsl/mAP"):
        train(config(tmp_path, dataset, tiny_clip_files, "train.early_stop=val/map"), progress=False)
    with pytest.raises(ConfigError, match="trackers: unknown tracker nosuchtracker"):
        train(config(tmp_path, dataset, tiny_clip_files, "trackers=[nosuchtracker]"), progress=False)
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        with pytest.raises(ConfigError, match="tensorboard not installed"):
            train(config(tmp_path, dataset, tiny_clip_files, "trackers=[tensorboard]"), progress=False)


def test_cli_train_eval(tmp_path, dataset, tiny_clip_files, capsys):
    from sigrl.cli import main

    y = tmp_path / "run.yaml"
    y.write_text(f"data: {{format: csv, root: '{dataset}'}}\nbackbone: {{model: '{tiny_clip_files[0]}', "
                 f"pretrained: '{tiny_clip_files[1]}'}}\nhead: {{class: adapter}}\ncache: {{dir: '{tmp_path / 'c'}'}}\n")
    code = main(["train", str(y), "--set", "train.epochs=1", "--set", "train.batch_size=8", "-o",
                 str(tmp_path / "r"), "-q"])
    out = capsys.readouterr()
    assert code == 1  # one unreadable image was skipped
    assert "broken.png" in out.err and "ZSL" in out.out and "AP 0" in out.out
    assert main(["eval", str(tmp_path / "r"), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["zero_shot"] and "zsl/mAP" in result["metrics"]
    assert main(["train", str(y), "--set", "train.epoch=1"]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_augment_falls_back_to_live_encoding(tmp_path, dataset, tiny_clip_files):
    from sigrl.train import train

    res = train(config(tmp_path, dataset, tiny_clip_files, "train.augment=true", "train.epochs=1"), progress=False)
    assert res.history[-1]["train/loss"] > 0
    assert not list((tmp_path.parent / "feature-cache").glob("*_train-*/.*.tmp"))


def test_run_directory_refusals(tmp_path, tiny_backbone):
    from sigrl.checkpoint import load_run, save_run
    from sigrl.errors import CheckpointError
    from sigrl.modules.adapter import AdapterHead
    from sigrl.prompts import load_prompts

    head = AdapterHead(64)
    ctx = torch.randn(3, 64)
    run = save_run(tmp_path / "r", head=head, backbone=tiny_backbone, prompts=load_prompts("photo"),
                   labels=["a", "b"], config={"output": "x"}, context=ctx, metrics={"test/mAP": 0.5})
    loaded = load_run(run, backbone=tiny_backbone)
    assert torch.equal(loaded.context, ctx) and loaded.labels == ["a", "b"] and loaded.config == {"output": "x"}
    assert loaded.prompts.templates == load_prompts("photo").templates and loaded.metrics == {"test/mAP": 0.5}
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[k], v)

    class Wide:  # a backbone of another width
        embed_dim = 128

    with pytest.raises(CheckpointError, match="embed_dim"):
        load_run(run, backbone=Wide())
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "embed_dim": 32}))
    with pytest.raises(CheckpointError, match="embed_dim"):
        load_run(run)
    (run / "run.json").write_text(json.dumps(info))
    blob = (run / "head.safetensors").read_bytes()
    (run / "head.safetensors").write_bytes(blob[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="do not match"):
        load_run(run)
    (run / "head.safetensors").write_bytes(blob)
    (run / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(run)
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no run.json"):
        load_run(tmp_path)
