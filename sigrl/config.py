"""Run configuration: one dataclass tree, loaded from YAML, overridden with ``--set``.

A run config is data (nanoGPT style)::

    cfg = load_config("configs/world_zsl.yaml", overrides=["train.epochs=3", "head.options.chunk=8"])
    cfg.train.batch_size        # 64
    config_to_dict(cfg)         # plain dict, what run/config.yaml holds

Sections (every key has a default; a YAML file names only what it changes):

    data      format (csv|world|nuswide|voc|coco|cub|formatted), root, observed
              (full|single_positive|partial|partial_sst: the SST protocol's Bernoulli mask),
              proportion, seed, val_fraction, all_labels (csv/world: ignore unseen.txt, train on
              every label), max_train_images (seeded subset), world (WorldSpec fields, + quick:
              true), options
              (keyword arguments of the dataset loader)
    backbone  model (open_clip name, JSON config, HF directory, or "world"), pretrained,
              preprocess (overrides: image_size, resize_size, interpolation, mean, std),
              pretrain (model "world": how the tiny model is pre-trained; quick: true for tests),
              finetune (the paper's regime: {blocks: N} fine-tunes the last N ViT blocks, see
              sigrl.finetune)
    prompts   name (prompt set or template), learner (fixed|coop|csc|dualcoop; tune: true is
              the older spelling of coop), n_ctx, init (random or a phrase), negative_init
              (dualcoop), init_std, options (keyword arguments of the learner)
    head      class (none|sigrl|adapter; none trains the prompts alone), options (keyword
              arguments of the head)
    loss      name (see sigrl.registry.LOSSES), options; transport_weight (> 0 adds the
              conditional-transport loss between label-specific features and label
              embeddings), transport_tau, transport_labels (observed|predicted)
    method    name (none|sst_counted|clsl_threshold: label recovery between epochs), options
    train     epochs, batch_size (global, split across processes), lr, weight_decay, grad_accum,
              mixed_precision (no|fp16|bf16), seed, eval_every, early_stop, patience,
              scheduler (constant|cosine), warmup_steps, augment, num_workers
    eval      empty_class (zero|skip), batch_size
    cache     dir (feature caches; default <sigrl cache>/features), shard_size, enabled
    output    the run directory
    trackers  Accelerate trackers to log to (e.g. [tensorboard])

Errors (unknown key, wrong type, impossible value) are :class:`~sigrl.errors.ConfigError`
naming the key and the file (or ``--set``).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .registry import HEADS, LOSSES, PROMPT_LEARNERS, RECOVERIES

__all__ = ["Config", "load_config", "config_from_dict", "config_to_dict", "apply_override", "dump_config"]


@dataclass
class DataConfig:
    format: str = "world"
    root: str = ""
    observed: str = "full"
    proportion: float = 1.0
    seed: int = 0
    val_fraction: float = 0.0
    all_labels: bool = False  # csv/world: train and test on every label, ignoring unseen.txt
    max_train_images: int | None = None  # train on a seeded random subset of this size
    world: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass
class BackboneConfig:
    model: str = "world"
    pretrained: str | None = None
    preprocess: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)  # model "world": PretrainSpec fields (+ quick: true)
    finetune: dict = field(default_factory=dict)  # the paper's regime: {blocks: 2, ...} (sigrl.finetune)


@dataclass
class PromptsConfig:
    name: str = "photo"
    learner: str = "fixed"  # fixed | coop | csc | dualcoop (sigrl.registry.PROMPT_LEARNERS)
    tune: bool = False  # older spelling of learner: coop
    n_ctx: int = 4  # context vectors per prompt (init: random)
    init: str = "random"  # "random" (N(0, init_std^2)) or a phrase ("a photo of a": its token embeddings)
    negative_init: str | None = None  # dualcoop: the negative context's start (null: as init)
    init_std: float = 0.02
    options: dict = field(default_factory=dict)  # keyword arguments of the learner (dualcoop: spatial_scale, logit_scale)


@dataclass
class HeadConfig:
    # YAML key "class" (a Python keyword): see _KEY_ALIASES
    head_class: str = "sigrl"
    options: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "ranking"
    options: dict = field(default_factory=dict)
    # conditional-transport auxiliary loss (SCT), added with this weight to any loss above
    transport_weight: float = 0.0
    transport_tau: float = 0.1
    transport_labels: str = "observed"  # which labels each image transports: observed | predicted


@dataclass
class MethodConfig:
    name: str = "none"
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    eval_every: int = 1
    early_stop: str = "auto"
    patience: int | None = None
    scheduler: str = "constant"
    warmup_steps: int = 0
    augment: bool = False
    num_workers: int = 0


@dataclass
class EvalConfig:
    empty_class: str = "zero"
    batch_size: int = 128


@dataclass
class CacheConfig:
    dir: str = ""
    shard_size: int = 1024
    enabled: bool = True
    build_batch_size: int = 64


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    output: str = "runs/run"
    trackers: list[str] = field(default_factory=list)


# YAML key -> field name, per dataclass
_KEY_ALIASES = {HeadConfig: {"class": "head_class"}}

CHOICES = {
    "data.format": ("csv", "world", "nuswide", "voc", "coco", "cub", "formatted"),
    "data.observed": ("full", "single_positive", "partial", "partial_sst"),
    "head.class": ("none",) + HEADS.names,  # none: no head, the prompt learner scores (prompts alone)
    "prompts.learner": PROMPT_LEARNERS.names,
    "loss.name": LOSSES.names,
    "method.name": ("none",) + RECOVERIES.names,
    "loss.transport_labels": ("observed", "predicted"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.scheduler": ("constant", "cosine"),
    "eval.empty_class": ("zero", "skip"),
}
POSITIVE = ("train.epochs", "train.batch_size", "train.grad_accum", "train.eval_every", "prompts.n_ctx",
            "cache.shard_size", "cache.build_batch_size", "eval.batch_size", "data.max_train_images")
NON_NEGATIVE = ("train.lr", "train.weight_decay", "train.warmup_steps", "train.num_workers", "train.patience",
                "prompts.init_std", "loss.transport_weight")


def _yaml_key(cls, name: str) -> str:
    for key, field_name in _KEY_ALIASES.get(cls, {}).items():
        if field_name == name:
            return key
    return name


def _field_name(cls, key: str) -> str:
    return _KEY_ALIASES.get(cls, {}).get(key, key)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value, tp, key: str, source: str):
    """``value`` checked against the annotation ``tp`` (int accepted for float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: {key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (typing.Any,)
        if isinstance(value, str):  # "--set trackers=tensorboard"
            value = [value] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is typing.Any:
        return value
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping (key: value), got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads 3e-3 as a string; a number is meant
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # "root: 2024" is still a path
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {tp}")  # pragma: no cover


def _build(cls, raw, prefix: str, source: str):
    """A dataclass of type ``cls`` from the mapping ``raw`` (missing keys: defaults)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'the config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = _field_name(cls, str(key))
        full = f"{prefix}{key}"
        if name not in names:
            valid = ", ".join(_yaml_key(cls, n) for n in sorted(names))
            raise ConfigError(f"{source}: unknown key '{full}' (valid keys{' in ' + prefix[:-1] if prefix else ''}: {valid})")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(tp)}:
                value = {"name": value}  # "loss: an" is short for "loss: {name: an}"
            values[name] = _build(tp, value, f"{full}.", source)
        else:
            if value is False and "no" in CHOICES.get(full, ()):
                value = "no"  # YAML 1.1 reads a bare `no` as false
            values[name] = _coerce(value, tp, full, source)
    return cls(**values)


def config_from_dict(raw: dict | None, source: str = "<config>") -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    cfg = _build(Config, raw or {}, "", source)
    validate(cfg, source)
    return cfg


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, _field_name(type(obj), part))
    return obj


def validate(cfg: Config, source: str = "<config>") -> None:
    """Value checks beyond types (choices, signs, ranges)."""
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(choices)}, got {value!r}")
    for key in POSITIVE:
        value = _get(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {value!r}")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{source}: {key} must be >= 0, got {value!r}")
    if not 0.0 < cfg.data.proportion <= 1.0:
        raise ConfigError(f"{source}: data.proportion must be in (0, 1], got {cfg.data.proportion!r}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"{source}: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction!r}")
    if cfg.data.format != "world" and not cfg.data.root:
        raise ConfigError(f"{source}: data.root is required for data.format={cfg.data.format} (the dataset folder)")
    if cfg.backbone.model == "world" and cfg.data.format != "world":
        raise ConfigError(f"{source}: backbone.model 'world' (the embedded tiny model) needs data.format=world; "
                          "name an open_clip model or a model JSON/directory")
    if not cfg.loss.transport_tau > 0:
        raise ConfigError(f"{source}: loss.transport_tau must be > 0, got {cfg.loss.transport_tau!r}")
    if not cfg.output:
        raise ConfigError(f"{source}: output (the run directory) must not be empty")
    if cfg.prompts.tune and cfg.prompts.learner not in ("fixed", "coop"):
        raise ConfigError(f"{source}: prompts.tune=true is the older spelling of prompts.learner=coop; it "
                          f"contradicts prompts.learner={cfg.prompts.learner} (remove prompts.tune)")
    if cfg.head.head_class == "none" and cfg.prompts.learner == "fixed" and not cfg.prompts.tune:
        raise ConfigError(f"{source}: head.class=none trains the prompts alone, but prompts.learner=fixed has "
                          "nothing to learn; choose prompts.learner coop, csc or dualcoop, or a head")
    if cfg.data.observed in ("partial", "partial_sst") and cfg.data.proportion >= 1.0:
        raise ConfigError(f"{source}: data.observed={cfg.data.observed} needs data.proportion < 1 (the fraction of labels kept)")


def config_to_dict(cfg) -> dict:
    """The config as plain YAML-able data (YAML key names, e.g. ``head.class``)."""
    if dataclasses.is_dataclass(cfg):
        return {_yaml_key(type(cfg), f.name): config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``"key.sub=value"`` to the raw mapping in place; the value is parsed as YAML
    (``3`` int, ``true`` bool, ``[a, b]`` list, ``null``). Paths that do not exist in
    the schema are refused later by :func:`config_from_dict`."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {assignment!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part in ("loss", "method"):
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is not a section")
        node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (YAML) and apply ``--set`` overrides; validate everything."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a run config must be a YAML mapping (section: ...), got {type(raw).__name__}")
    for assignment in overrides or ():
        apply_override(raw, assignment)
    if overrides:
        source = f"{source} + --set"
    return config_from_dict(raw, source)
