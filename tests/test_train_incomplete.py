"""Incomplete-label training wired through the trainer: VLPL pseudo labels computed from the
frozen backbone before the first epoch, and the conditional-transport auxiliary loss
(``loss.transport_weight``) on both heads. Tiny random backbone, generated CSV dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_train import config, make_dataset


@pytest.fixture(scope="module")
def all_labels_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("spml-data"), n_train=24, n_val=0, n_test=8, unseen=False, seed=3)


def _state_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((run_dir / "state").glob("model*.safetensors"))
    assert files, f"no model state in {run_dir / 'state'}"
    return load_file(str(files[0]))


def _live_cosines(data: Path, backbone, labels: list[str]) -> torch.Tensor:
    """Frozen-backbone cosine(image, label prompt) of every train image, encoded here from
    the image files (not through the feature cache)."""
    import csv

    from sigrl.images import load_image
    from sigrl.prompts import embed_labels

    with open(data / "train.csv", newline="") as f:
        paths = [row["image"] for row in csv.DictReader(f)]
    pixels = torch.stack([backbone.preprocess(load_image(data / p)) for p in paths])
    with torch.no_grad():
        g = torch.nn.functional.normalize(backbone.encode_images(pixels)[0].float(), dim=-1)
    t = torch.nn.functional.normalize(embed_labels(backbone, labels, "photo").float(), dim=-1)
    return g @ t.t()


def test_vlpl_pseudo_labels_come_from_the_frozen_backbone(tmp_path, all_labels_data, tiny_clip_files, tiny_backbone):
    from sigrl.data import observed as obs
    from sigrl.data.csvdata import load_csv_dataset
    from sigrl.train import train

    ds = load_csv_dataset(all_labels_data)
    labels = list(ds.seen)
    cos = _live_cosines(all_labels_data, tiny_backbone, labels)
    # a threshold in the widest gap of the middle half of the scores (fp16 cache rounding
    # cannot move a score across it)
    flat = np.sort(cos.flatten().numpy())
    lo, hi = len(flat) // 4, 3 * len(flat) // 4
    i = lo + int(np.argmax(np.diff(flat[lo:hi])))
    threshold = float(flat[i] + flat[i + 1]) / 2

    cfg = config(tmp_path, all_labels_data, tiny_clip_files, "data.observed=single_positive", "loss.name=vlpl",
                 "loss.options.text=prompts", "loss.options.temperature=null", f"loss.options.pos_threshold={threshold}", "train.epochs=1")
    res = train(cfg, progress=False)
    assert np.isfinite(res.history[-1]["train/loss"])
    stored = _state_tensors(Path(cfg.output))["loss.pseudo_labels"].to(torch.int64)

    observed = torch.as_tensor(obs.single_positive(ds.train.targets, seed=cfg.data.seed), dtype=torch.int64)
    unobserved = observed == 0
    expected = torch.where(unobserved, (cos > threshold).to(torch.int64), observed)
    assert stored.shape == observed.shape
    assert torch.equal(stored, expected)
    # the rule did something in both directions: some unobserved entries became pseudo
    # positives, others stayed unknown
    assert 0 < int((stored[unobserved] == 1).sum()) < int(unobserved.sum())
    # the first epoch's metrics row reports how good they are against the full labels
    full = torch.as_tensor(ds.train.targets, dtype=torch.int64)
    pseudo_pos, hidden = (stored == 1) & unobserved, (full == 1) & unobserved
    row = res.history[0]
    assert row["pseudo/pseudo_pos_precision"] == pytest.approx(float((pseudo_pos & hidden).sum() / pseudo_pos.sum()))
    assert row["pseudo/pseudo_pos_recall"] == pytest.approx(float((pseudo_pos & hidden).sum() / hidden.sum()))
    assert row["pseudo/pseudo_pos_per_image"] == pytest.approx(float(pseudo_pos.sum()) / len(stored))


def test_vlpl_changes_training_compared_with_em(tmp_path, all_labels_data, tiny_clip_files):
    from sigrl.train import train

    base = ("data.observed=single_positive", "train.epochs=1")
    em = train(config(tmp_path, all_labels_data, tiny_clip_files, *base, "loss.name=vlpl",
                      "loss.options.pos_threshold=2.0", name="em"), progress=False)  # no score > 2: plain EM
    vl = train(config(tmp_path, all_labels_data, tiny_clip_files, *base, "loss.name=vlpl",
                      "loss.options.temperature=null", "loss.options.pos_threshold=-1.0", name="vlpl"),
               progress=False)  # every unobserved entry a pseudo positive
    assert vl.history[-1]["train/loss"] != pytest.approx(em.history[-1]["train/loss"], rel=1e-3)
    # with every unobserved entry a (smoothed, weighted) positive the loss is a BCE, > 0;
    # EM on unobserved entries is -alpha * entropy, which pulls the total down
    assert vl.history[-1]["train/loss"] > em.history[-1]["train/loss"]


@pytest.mark.parametrize("head", ["adapter", "sigrl"])
def test_transport_auxiliary_loss_is_added_and_trains(tmp_path, all_labels_data, tiny_clip_files, head):
    from sigrl.train import train

    base = ("data.observed=single_positive", "loss.name=an", f"head.class={head}", "train.epochs=2",
            "data.max_train_images=16")
    plain = train(config(tmp_path, all_labels_data, tiny_clip_files, *base, name="plain"), progress=False)
    ct = train(config(tmp_path, all_labels_data, tiny_clip_files, *base, "loss.transport_weight=1.0", name="ct"),
               progress=False)
    # the transport cost is >= 0 and nearly 2 for random features (cosines near 0), so
    # the first epoch's loss grows by about the weight times that
    first_gap = ct.history[0]["train/loss"] - plain.history[0]["train/loss"]
    assert 0.5 < first_gap < 2.5
    assert all(np.isfinite(r["test/mAP"]) for r in ct.history)
    pred = train(config(tmp_path, all_labels_data, tiny_clip_files, *base, "loss.transport_weight=1.0",
                        "loss.transport_labels=predicted", name="pred"), progress=False)
    assert pred.history[0]["train/loss"] != pytest.approx(ct.history[0]["train/loss"], rel=1e-4)


def test_transport_config_errors(tmp_path, all_labels_data, tiny_clip_files):
    from sigrl.errors import ConfigError
    from sigrl.train import train

    with pytest.raises(ConfigError, match="transport_weight"):
        config(tmp_path, all_labels_data, tiny_clip_files, "loss.transport_weight=-1")
    with pytest.raises(ConfigError, match="transport_labels"):
        config(tmp_path, all_labels_data, tiny_clip_files, "loss.transport_labels=everything")
    with pytest.raises(ConfigError, match="transport_tau"):
        config(tmp_path, all_labels_data, tiny_clip_files, "loss.transport_tau=0")
    with pytest.raises(ConfigError, match="pos_threshold"):
        config_bad = config(tmp_path, all_labels_data, tiny_clip_files, "loss.name=vlpl",
                            "loss.options.pos_threshold=.nan", "data.observed=single_positive", name="nan")
        train(config_bad, progress=False)


def test_train_help_names_every_loss_and_recovery_without_torch():
    """``sigrl train --help`` lists the registries' names, and reading them imports no torch;
    every registered name resolves to a class."""
    import subprocess
    import sys

    from sigrl.registry import HEADS, LOSSES, RECOVERIES

    code = ("import sys, contextlib, io\n"
            "from sigrl.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try: main(['train', '--help'])\n"
            "    except SystemExit: pass\n"
            "print(buf.getvalue()); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    text = " ".join(out.split())
    for registry in (HEADS, LOSSES, RECOVERIES):
        assert " ".join(registry.names) in text
        for name in registry.names:
            assert isinstance(registry.get(name), type)