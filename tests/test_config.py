"""Run config: YAML + --set overrides, validation errors that name the key and file."""
from __future__ import annotations

from pathlib import Path

import pytest

from sigrl.config import Config, config_from_dict, config_to_dict, dump_config, load_config
from sigrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 3\n  lr: 1\nhead:\n  class: adapter\n  options: {hidden: 8}\nloss: an\n")
    cfg = load_config(p)
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.head.head_class == "adapter" and cfg.head.options == {"hidden": 8}
    assert cfg.loss.name == "an" and cfg.loss.options == {}
    assert cfg.train.batch_size == 32  # default kept


def test_overrides(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(p, ["train.epochs=5", "head.options.chunk=4", "trackers=[tensorboard]",
                          "backbone.pretrained=null", "loss.options.margin=0.5", "prompts.tune=true"])
    assert cfg.train.epochs == 5
    assert cfg.head.options == {"chunk": 4}
    assert cfg.trackers == ["tensorboard"]
    assert cfg.loss.options == {"margin": 0.5}
    assert cfg.prompts.tune is True


def test_bare_no_is_a_choice(tmp_path):
    p = write(tmp_path, "train:\n  mixed_precision: no\n")
    assert load_config(p).train.mixed_precision == "no"
    assert load_config(p, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_round_trip():
    cfg = load_config(None, ["train.epochs=2", "head.class=adapter"])
    d = config_to_dict(cfg)
    assert d["head"]["class"] == "adapter"
    import yaml

    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("text, needle", [
    ("trian:\n  epochs: 3\n", "trian"),
    ("train:\n  epoch: 3\n", "train.epoch"),
    ("train:\n  epochs: three\n", "train.epochs"),
    ("train:\n  batch_size: -4\n", "train.batch_size"),
    ("train:\n  lr: -0.1\n", "train.lr"),
    ("train:\n  epochs: 2.5\n", "train.epochs"),
    ("train:\n  augment: 1\n", "train.augment"),
    ("train:\n  mixed_precision: fp8\n", "train.mixed_precision"),
    ("data:\n  format: csv\n", "data.root"),
    ("data:\n  format: parquet\n  root: x\n", "data.format"),
    ("data:\n  proportion: 1.5\n", "data.proportion"),
    ("head:\n  klass: sigrl\n", "head.klass"),
    ("head:\n  options: 3\n", "head.options"),
    ("prompts:\n  n_ctx: 0\n", "prompts.n_ctx"),
    ("data:\n  max_train_images: 0\n", "data.max_train_images"),
    ("- a\n- b\n", "mapping"),
    ("train: [1, 2\n", "YAML"),
])
def test_errors_name_key_and_file(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert needle in msg and str(p) in msg
    assert "\n" not in msg


def test_bad_override(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"--set.*train\.epoch"):
        load_config(p, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(p, ["train.batch_size=0"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.output


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `3e-3` as a string; a float key takes it as the number."""
    from sigrl.config import load_config
    from sigrl.errors import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-3\n  weight_decay: 1E-4\n")
    cfg = load_config(path, ["loss.transport_weight=2e-1"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.loss.transport_weight) == (0.003, 0.0001, 0.2)
    for bad in ("3e-3x", "e-3", "1e", "1e-3e2"):
        with pytest.raises(ConfigError, match="train.lr must be a number"):
            load_config(None, [f"train.lr={bad}"])
