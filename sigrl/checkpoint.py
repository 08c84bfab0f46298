"""A trained run on disk, and loading it back for tagging and evaluation.

Run directory::

    run/head.safetensors   head weights (none for head.class none) + the prompt learner's tensors:
                           "prompt_context" (coop (M, W), csc (C, M, W), dualcoop positive),
                           "prompt_context_negative" (dualcoop (M, W))
    run/run.json           what is needed to use the head (below)
    run/config.yaml        the resolved run config
    run/metrics.csv        one row per evaluated epoch (written by the trainer)
    run/eval.json          the last 'sigrl eval' result
    run/state/             Accelerate training state for --resume (trainer only)

``run.json``::

    {"head_class": "SigRLHead" | "AdapterHead", "head_config": {...}, "labels": [train labels],
     "backbone": {backbone spec}, "embed_dim": D, "preprocess": {...}, "prompts": {PromptSet},
     "n_ctx": 0, "prompt_learner": {"name": "fixed"|"coop"|"csc"|"dualcoop", "n_ctx": M, ...},
     "sigrl_version": "...", "metrics": {...}, "head_sha256": "..."}

``head_class`` is null for a run that trained the prompts alone (``head.class: none``).

:func:`save_run` writes ``head.safetensors`` first and ``run.json`` (which holds the
weights' hash) last, each atomically, so a reader sees a consistent pair or refuses;
:func:`load_run` is what ``sigrl tag --checkpoint RUN`` and ``sigrl eval RUN`` use.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from . import __version__
from .config import config_to_dict
from .errors import CheckpointError, ConfigError
from .prompts import PromptSet, load_prompts
from .registry import HEADS
from .safeio import atomic_write_bytes, atomic_write_text

HEAD_FILE = "head.safetensors"
BACKBONE_FILE = "backbone.safetensors"  # fine-tuned image-tower tensors (sigrl.finetune), when trained
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
CONTEXT_KEY = "prompt_context"
PROMPT_PREFIX = "prompt_"  # every tensor of the prompt learner (sigrl.modules.prompt_learner)

__all__ = ["save_run", "load_run", "LoadedRun", "head_class", "build_head"]


def head_class(name: str):
    """The head class for a run.json ``head_class`` or a config ``head.class`` name."""
    if name not in HEADS:
        raise CheckpointError(f"unknown head class {name!r}; known: {', '.join(HEADS.names)}")
    try:
        return HEADS.get(name)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def build_head(name: str, embed_dim: int, options: dict | None = None) -> nn.Module:
    """A fresh head: ``head.class`` (a name of :data:`sigrl.registry.HEADS`) with ``head.options``."""
    cls = head_class(name)
    try:
        return cls(embed_dim, **(options or {}))
    except TypeError as err:
        raise ConfigError(f"head.options do not fit {cls.__name__}: {err}") from err


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _plain(obj):
    """JSON-able copy (tuples -> lists, numpy/torch scalars -> numbers)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _config_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        return config
    return config_to_dict(config)


def save_run(run_dir: str | Path, *, head: nn.Module | None, backbone, prompts, labels: list[str], config=None,
             context: torch.Tensor | None = None, metrics: dict | None = None,
             backbone_tensors: dict[str, torch.Tensor] | None = None, learner=None) -> Path:
    """Write ``head.safetensors``, ``run.json`` and ``config.yaml`` into ``run_dir``.

    Args:
        head: the trained head (an unwrapped module with ``config``), or None (prompts alone).
        backbone: the backbone it was trained on (``spec``, ``embed_dim``, preprocessing).
        prompts: the :class:`~sigrl.prompts.PromptSet` used for label embeddings.
        labels: the training label names.
        config: the resolved run config (dataclass or dict).
        context: learned prompt context vectors (n_ctx, W), or None (a coop context; older
            spelling of ``learner``).
        learner: the run's prompt learner (:mod:`sigrl.modules.prompt_learner`): its
            ``tensors()`` and ``describe()`` are saved.
        metrics: metrics to record (e.g. the best epoch's).
        backbone_tensors: fine-tuned image-tower tensors (``backbone.finetune``), saved
            in ``backbone.safetensors`` and put back on a copy of the backbone by the scorer.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = None if head is None else type(head).__name__
    if name is not None and name not in HEADS:
        raise CheckpointError(f"cannot save a {name}: known head classes are "
                              f"{', '.join(HEADS.class_name(n) for n in HEADS.names)}")
    tensors = {} if head is None else {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    reserved = [k for k in tensors if k.startswith(PROMPT_PREFIX)]
    if reserved:
        raise CheckpointError(f"{name} has a weight named {reserved[0]!r}; run files reserve names starting "
                              f"with {PROMPT_PREFIX!r} for the prompt learner")
    if learner is not None:
        prompt_tensors, learner_info = learner.tensors(), learner.describe()
    elif context is not None:
        prompt_tensors = {CONTEXT_KEY: context.detach().float().cpu().contiguous()}
        learner_info = {"name": "coop", "n_ctx": int(context.shape[0])}
    else:
        prompt_tensors, learner_info = {}, {"name": "fixed", "n_ctx": 0}
    tensors.update({k: v.detach().float().cpu().contiguous() for k, v in prompt_tensors.items()})
    blob = st_save(tensors, metadata={"format": "sigrl-head", "head_class": str(name)})
    prompts = load_prompts(prompts)
    info = {
        "head_class": name,
        "head_config": {} if head is None else _plain(head.config),
        "labels": list(labels),
        "backbone": _plain(backbone.spec),
        "embed_dim": int(backbone.embed_dim),
        "fingerprint": backbone.fingerprint,
        "preprocess": _plain(backbone.preprocess_config.to_dict()),
        "prompts": prompts.to_dict(),
        "n_ctx": int(learner_info.get("n_ctx", 0)),
        "prompt_learner": _plain(learner_info),
        "sigrl_version": __version__,
        "metrics": _plain(metrics or {}),
        "head_sha256": _sha256(blob),
    }
    if backbone_tensors:
        tuned = st_save({k: v.detach().cpu().contiguous() for k, v in backbone_tensors.items()},
                        metadata={"format": "sigrl-backbone-tail"})
        atomic_write_bytes(run_dir / BACKBONE_FILE, tuned)
        info["backbone_sha256"] = _sha256(tuned)
    atomic_write_bytes(run_dir / HEAD_FILE, blob)
    if config is not None:
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(_config_dict(config), sort_keys=False))
    atomic_write_text(run_dir / RUN_FILE, json.dumps(info, indent=1))
    return run_dir


@dataclass
class LoadedRun:
    """A run read back by :func:`load_run`."""

    run_dir: Path
    head: nn.Module | None  # None: the run trained the prompts alone (head.class none)
    backbone_spec: dict
    preprocess: dict
    prompts: object  # PromptSet
    context: torch.Tensor | None
    labels: list[str]
    config: dict
    metrics: dict
    info: dict = field(default_factory=dict)
    backbone_tensors: dict | None = None  # fine-tuned image-tower tensors, or None (frozen backbone)
    learner: dict = field(default_factory=dict)  # run.json "prompt_learner" (name, n_ctx, ...)
    prompt_tensors: dict = field(default_factory=dict)  # the learner's "prompt_*" tensors

    @property
    def embed_dim(self) -> int:
        return int(self.info["embed_dim"])

    def check_backbone(self, backbone) -> None:
        """Refuse a backbone whose embedding width differs from the run's."""
        if int(backbone.embed_dim) != self.embed_dim:
            raise CheckpointError(
                f"{self.run_dir}: head was trained on a backbone with embed_dim {self.embed_dim} "
                f"({self.backbone_spec.get('model')}), the backbone given has {backbone.embed_dim}; "
                "use the run's backbone")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", backbone=None) -> LoadedRun:
    """Read a run directory: the head in eval mode on ``device`` and what it needs.

    Raises:
        CheckpointError: missing or corrupt files, weights that do not match run.json, an
            unknown head class, or a head whose embed_dim differs from the backbone's
            (the recorded one, or ``backbone`` when given).
    """
    run_dir = Path(run_dir)
    info_path, head_path = run_dir / RUN_FILE, run_dir / HEAD_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found (train one with 'sigrl train CONFIG')")
    if not info_path.is_file():
        raise CheckpointError(f"{run_dir}: not a sigrl run (no {RUN_FILE}); did training finish an epoch?")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        for key in ("head_class", "head_config", "labels", "backbone", "embed_dim", "preprocess", "prompts"):
            if key not in info:
                raise ValueError(f"missing key {key!r}")
        if not isinstance(info["head_config"], dict):
            raise ValueError("head_config is not a JSON object")
        if isinstance(info["embed_dim"], bool) or not isinstance(info["embed_dim"], int):
            raise ValueError(f"embed_dim must be an integer, got {info['embed_dim']!r}")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{info_path}: corrupt run file ({err}); retrain or restore the run") from None
    if not head_path.is_file():
        raise CheckpointError(f"{run_dir}: {HEAD_FILE} missing; retrain or restore the run")
    blob = head_path.read_bytes()
    if info.get("head_sha256") and _sha256(blob) != info["head_sha256"]:
        raise CheckpointError(f"{head_path}: weights do not match {RUN_FILE} (corrupt or half-saved); "
                              "retrain or restore the run")
    try:
        tensors = st_load(blob)
    except (SafetensorError, Exception) as err:  # noqa: BLE001 - any parse failure is corruption
        raise CheckpointError(f"{head_path}: corrupt weights file ({err})") from None
    embed_dim = int(info["embed_dim"])
    head_dim = info["head_config"].get("embed_dim")
    if head_dim is not None and head_dim != embed_dim:
        raise CheckpointError(f"{run_dir}: head has embed_dim {head_dim} but its backbone has {embed_dim}")
    prompt_tensors = {k: tensors.pop(k) for k in list(tensors) if k.startswith(PROMPT_PREFIX)}
    context = prompt_tensors.get(CONTEXT_KEY)
    head = None
    if info["head_class"] is not None:  # null: the prompts alone
        cls = head_class(info["head_class"])
        try:
            head = cls.from_config(info["head_config"])
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{info_path}: cannot rebuild {info['head_class']} from head_config ({err})") from None
        try:
            head.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{head_path}: weights do not fit {info['head_class']} "
                                  f"({str(err).splitlines()[0][:200]})") from None
        if head_dim is None and getattr(head, "embed_dim", embed_dim) != embed_dim:
            raise CheckpointError(f"{run_dir}: head has embed_dim {head.embed_dim} but its backbone has {embed_dim}")
    elif tensors:
        raise CheckpointError(f"{head_path}: run.json names no head but the file holds head weights "
                              f"({', '.join(list(tensors)[:3])})")
    elif not prompt_tensors:
        raise CheckpointError(f"{run_dir}: run.json names no head and no prompt context; nothing was trained")
    held = 0 if context is None else int(context.shape[-2])  # coop/dualcoop (M, W), csc (C, M, W)
    if int(info.get("n_ctx") or 0) != held:
        raise CheckpointError(f"{run_dir}: run.json says n_ctx={info.get('n_ctx')} but the weights hold "
                              f"{'no' if context is None else held} context vectors")
    learner = info.get("prompt_learner") or {}
    if not isinstance(learner, dict):
        raise CheckpointError(f"{info_path}: corrupt run file (prompt_learner is not a JSON object)")
    tuned = None
    if info.get("backbone_sha256"):
        path = run_dir / BACKBONE_FILE
        tuned_blob = path.read_bytes() if path.is_file() else b""
        if _sha256(tuned_blob) != info["backbone_sha256"]:
            raise CheckpointError(f"{path}: missing or does not match {RUN_FILE}; retrain or restore the run")
        tuned = st_load(tuned_blob)
    config: dict = {}
    if (run_dir / CONFIG_FILE).is_file():
        try:
            config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: corrupt config ({err})") from None
    run = LoadedRun(
        run_dir=run_dir, head=None if head is None else head.to(device).eval(), backbone_spec=info["backbone"],
        preprocess=info["preprocess"], prompts=PromptSet.from_dict(info["prompts"]),
        context=None if context is None else context.to(device), labels=list(info["labels"]),
        config=config, metrics=info.get("metrics", {}), info=info, backbone_tensors=tuned, learner=dict(learner),
        prompt_tensors={k: v.to(device) for k, v in prompt_tensors.items()})
    if backbone is not None:
        run.check_backbone(backbone)
    return run
