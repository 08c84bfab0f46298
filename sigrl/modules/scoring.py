"""Scoring: turning the local and global cosine scores of a head into logits.

Shared by every head (:class:`~sigrl.modules.head.SigRLHead`,
:class:`~sigrl.modules.adapter.AdapterHead`) and by plain CLIP matching
(:func:`~sigrl.modules.matching.match_scores`). Given the local score ``s_l`` and the
global score ``s_g`` of each image, both (B, C)::

    combine="l2"       logits = scale * (s_l / ||s_l||_2 + s_g / ||s_g||_2) / 2       (reference)
    combine="softmax"  logits = log((softmax_C(scale s_l) + softmax_C(scale s_g)) / 2)  (ours)
    combine="mean"     logits = scale * (s_l + s_g) / 2
    combine="centered" logits = scale * ((s_l - mean_C s_l) + (s_g - mean_C s_g)) / 2  (ours)

The norms and softmaxes run over the label axis of one image (never over the batch).
``"l2"`` is the rule of the reference SigRL code (MVL-Lab/SigRL ``OV/models/clip_vit.py``,
``forward`` with ``norm_pred=True``); with ``scale = 1`` its logits lie in [-1, 1]. With
one part only (``mode="global"`` or ``"local"``) the same rule is applied to that part.

Also here: the input checks of the heads, :class:`LogitScale`, :class:`LogitBias` and the
``config`` / ``from_config`` mixin the heads share.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import ConfigError, UsageError

COMBINES = ("l2", "softmax", "mean", "centered")
MAX_LOGIT_SCALE = 100.0


def default_logit_scale(combine: str) -> float:
    """The scale a head uses when none is given: 1 for the reference rule "l2" (its
    logits are the reference's scores, in [-1, 1]), CLIP's 100 for "softmax" and "mean"."""
    return 1.0 if combine == "l2" else 100.0


def l2_over_labels(scores: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, C) -> (B, C): each row divided by its L2 norm over the labels (rows of zeros
    stay zero)."""
    return Fn.normalize(scores, p=2, dim=-1, eps=eps)


def combine_scores(s_l: torch.Tensor | None, s_g: torch.Tensor | None, scale: torch.Tensor | float,
                   *, mode: str = "local+global", combine: str = "l2") -> torch.Tensor:
    """Turn the local and global scores (B, C) into logits (B, C) (rules in the module
    docstring). ``mode`` "global" / "local" uses one part only (the other may be None)."""
    if mode == "global":
        parts = [s_g]
    elif mode == "local":
        parts = [s_l]
    else:
        parts = [s_l, s_g]
    if combine == "l2":
        return scale * sum(l2_over_labels(s) for s in parts) / len(parts)
    if combine == "mean":
        return scale * sum(parts) / len(parts)
    if combine == "centered":
        return scale * sum(s - s.mean(dim=-1, keepdim=True) for s in parts) / len(parts)
    if combine != "softmax":
        raise UsageError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    logps = [torch.log_softmax(scale * s, dim=-1) for s in parts]
    if len(logps) == 1:
        return logps[0]
    # log((p1 + p2) / 2) as a logsumexp over the pair (ONNX has ReduceLogSumExp, no logaddexp)
    return torch.logsumexp(torch.stack(logps), dim=0) - math.log(2.0)


def check_features(who: str, embed_dim: int, global_feats, local_feats, label_emb, *, need_local: bool):
    """Validate the shapes of a head's inputs (raises UsageError naming the input)."""
    if not isinstance(global_feats, torch.Tensor) or global_feats.dim() != 2:
        raise UsageError(f"{who}: global_feats must be a (B, D) tensor, got {_shape(global_feats)}")
    B, D = global_feats.shape
    if D != embed_dim:
        raise UsageError(f"{who}: global_feats has width {D} but the head was built for embed_dim={embed_dim}")
    if not isinstance(label_emb, torch.Tensor) or label_emb.dim() != 2 or label_emb.shape[1] != D:
        raise UsageError(f"{who}: label_emb must be a (C, {D}) tensor, got {_shape(label_emb)}")
    if label_emb.shape[0] < 1:
        raise UsageError(f"{who}: label_emb is empty; pass at least one label")
    if local_feats is None:
        if need_local:
            raise UsageError(f"{who}: local_feats (B, P, D) are needed unless mode='global'")
        return
    if (not isinstance(local_feats, torch.Tensor) or local_feats.dim() != 3 or local_feats.shape[0] != B
            or local_feats.shape[2] != D or local_feats.shape[1] < 1):
        raise UsageError(f"{who}: local_feats must be a ({B}, P, {D}) tensor, got {_shape(local_feats)}")


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


class LogitScale(nn.Module):
    """The scale applied to the combined scores: fixed (a float in the config, no tensor)
    or learnable (parameter ``log_scale``, the scale clamped to at most 100 as in CLIP so a
    margin loss cannot win by inflating it).

    Under ``combine="l2"`` the scores are in [-1, 1] and the reference trains them
    unscaled (scale 1) with a margin-1 ranking loss: a larger scale makes that margin
    easier to meet, a learnable one lets the loss inflate it up to the clamp."""

    def __init__(self, init: float = 100.0, learn: bool = False):
        super().__init__()
        if not (init > 0 and math.isfinite(init)):
            raise ConfigError(f"logit_scale must be a positive number, got {init}")
        self.init = float(init)
        self.learn = bool(learn)
        if self.learn:
            self.log_scale = nn.Parameter(torch.tensor(math.log(self.init)))

    def forward(self) -> torch.Tensor | float:
        if self.learn:
            return self.log_scale.exp().clamp(max=max(MAX_LOGIT_SCALE, self.init))
        return self.init


class LogitBias(nn.Module):
    """An optional learnable scalar added to every logit (None: no bias, no parameter).

    It shifts all labels of all images alike, so every ranking (per image and per label,
    hence mAP and top-k) is unchanged; what it changes is the sigmoid a BCE-type loss puts
    on the logits. With ``combine="softmax"`` the logits are log-probabilities (<= 0), so
    sigmoid(logit) <= 0.5 and a positive can never be fitted; with ``combine="l2"`` and
    scale 1 they lie in [-1, 1], so sigmoid stays in [0.27, 0.73]. A bias (and, for "l2",
    a larger or learnable scale) lets such a loss fit. Like SigLIP's learnable logit bias."""

    def __init__(self, init: float | None = None):
        super().__init__()
        if init is not None and not math.isfinite(float(init)):
            raise ConfigError(f"logit_bias must be a finite number or null, got {init!r}")
        self.init = None if init is None else float(init)
        self.bias = nn.Parameter(torch.tensor(self.init)) if self.init is not None else None

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.bias is None else logits + self.bias


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


class _ConfigMixin:
    """``config`` (JSON-able dict) and ``from_config``: ``cls.from_config(head.config)``
    builds the same architecture; ``load_state_dict`` then restores the weights."""

    _CONFIG_KEYS: tuple[str, ...] = ()

    # config values that live on the LogitScale sub-module ``self.scale``
    @property
    def logit_scale(self) -> float:
        return self.scale.init

    @property
    def learn_logit_scale(self) -> bool:
        return self.scale.learn

    @property
    def logit_bias(self) -> float | None:
        return self.bias.init

    @property
    def config(self) -> dict[str, Any]:
        cfg = {"type": type(self).__name__}
        cfg.update({k: getattr(self, k) for k in self._CONFIG_KEYS})
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        if not isinstance(config, dict):
            raise ConfigError(f"{cls.__name__}.from_config needs a dict, got {type(config).__name__}")
        cfg = dict(config)
        kind = cfg.pop("type", cls.__name__)
        if kind != cls.__name__:
            raise ConfigError(f"config is for {kind!r}, not {cls.__name__}; build it with {kind}.from_config")
        unknown = sorted(set(cfg) - set(cls._CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"{cls.__name__} config has unknown key(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(cls._CONFIG_KEYS)}")
        if "embed_dim" not in cfg:
            raise ConfigError(f"{cls.__name__} config needs 'embed_dim'")
        dim = cfg.pop("embed_dim")
        return cls(dim, **cfg)
