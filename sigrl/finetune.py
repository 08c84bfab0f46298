"""The paper's training regime: the last ViT blocks fine-tuned, distilled toward the frozen model.

SigRL's reference training (MVL-Lab/SigRL ``train_nus.py`` and ``util/lr_decay.py``,
``fix_layer=10`` on a 12-block ViT-B/16) trains, besides the head:

    the last N ViT blocks + ln_post + the visual projection     (N = 2 in the reference)
    with layer-wise lr decay (BEiT):  lr(block k of L) = lr * decay^(L - k),
                                      lr(ln_post, proj) = lr
    an L1 distillation  ||g_student - g_frozen||_1 / (B D)  of the global image embedding
                                      toward the frozen model's (on the same augmented image)
    RandAugment on the training images

Config: ``backbone.finetune`` — ``{blocks: 2}`` turns it on; ``layer_decay`` (0.75),
``weight_decay`` (0.05; 1-D weights and biases get none, as BEiT/MAE),
``distill_weight`` (1.0), ``randaugment`` (true). Mixed precision: ``train.mixed_precision``
through Accelerate.

The feature cache cannot serve this mode (the encoder changes every step): every part is
encoded live, and evaluation encodes with the current fine-tuned blocks. The run saves
the fine-tuned tensors in ``backbone.safetensors``; :class:`sigrl.scorer.Scorer` loads
them onto a copy of the run's backbone, so ``sigrl eval``/``tag``/``bench`` use them.

Shapes: ``forward(pixels (B, 3, H, W))`` -> global (B, D) normalised, local (B, P, D)
raw, distillation loss (scalar).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as Fn
from torch import nn

from .errors import ConfigError

__all__ = ["FinetuneSpec", "FinetunedTail", "tail_state", "apply_tail_state"]


@dataclass(frozen=True)
class FinetuneSpec:
    """``backbone.finetune`` (module docstring); ``blocks == 0``: frozen backbone."""

    blocks: int = 0
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    distill_weight: float = 1.0
    randaugment: bool = True

    @classmethod
    def from_dict(cls, options: dict | None) -> "FinetuneSpec":
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"backbone.finetune: unknown key(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        try:
            spec = cls(**opts)
        except TypeError as err:
            raise ConfigError(f"backbone.finetune: {err}") from None
        if isinstance(spec.blocks, bool) or not isinstance(spec.blocks, int) or spec.blocks < 0:
            raise ConfigError(f"backbone.finetune.blocks must be an integer >= 0, got {spec.blocks!r}")
        if not 0 < float(spec.layer_decay) <= 1:
            raise ConfigError(f"backbone.finetune.layer_decay must be in (0, 1], got {spec.layer_decay!r}")
        if float(spec.weight_decay) < 0 or float(spec.distill_weight) < 0:
            raise ConfigError("backbone.finetune: weight_decay and distill_weight must be >= 0")
        return spec

    @property
    def enabled(self) -> bool:
        return self.blocks > 0

    def to_dict(self) -> dict:
        return asdict(self)


def _visual(backbone):
    visual = getattr(getattr(backbone, "model", None), "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if visual is None or blocks is None or getattr(visual, "proj", None) is None:
        raise ConfigError("backbone.finetune needs an open_clip ViT backbone (visual.transformer.resblocks, "
                          "visual.proj); this backbone has none")
    return visual, blocks


def tail_names(backbone, blocks: int) -> list[str]:
    """Names (in ``backbone.model.visual``) of the parameters the regime trains."""
    visual, resblocks = _visual(backbone)
    if blocks > len(resblocks):
        raise ConfigError(f"backbone.finetune.blocks={blocks}, but the ViT has {len(resblocks)} blocks")
    first = len(resblocks) - blocks
    keep = tuple(f"transformer.resblocks.{k}." for k in range(first, len(resblocks))) + ("ln_post.",)
    return [n for n, _ in visual.named_parameters() if n.startswith(keep) or n == "proj"]


class FinetunedTail(nn.Module):
    """The backbone's image tower with its last ``spec.blocks`` blocks, ``ln_post`` and
    ``proj`` trainable (the backbone's own parameters: evaluation sees them), and a frozen
    copy of the original tower as the distillation teacher (not a submodule: never
    saved, never trained)."""

    def __init__(self, backbone, spec: FinetuneSpec):
        super().__init__()
        visual, resblocks = _visual(backbone)
        object.__setattr__(self, "teacher", copy.deepcopy(visual).eval().requires_grad_(False))
        self.visual, self.spec, self.num_blocks = visual, spec, len(resblocks)
        self.names = tail_names(backbone, spec.blocks)
        params = dict(visual.named_parameters())
        for name in self.names:
            params[name].requires_grad_(True)

    def train(self, mode: bool = True):  # dropout etc. only in the trained blocks' own modules
        super().train(mode)
        self.teacher.eval()
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Layer-wise lr decay (module docstring); BEiT's no-decay rule for 1-D tensors."""
        params = dict(self.visual.named_parameters())
        groups: dict[tuple, dict] = {}
        for name in self.names:
            p = params[name]
            if name.startswith("transformer.resblocks."):
                k = int(name.split(".")[2])
                scale = self.spec.layer_decay ** (self.num_blocks - k)
            else:
                scale = 1.0
            wd = 0.0 if p.ndim <= 1 or name.endswith(".bias") else self.spec.weight_decay
            key = (scale, wd)
            groups.setdefault(key, {"params": [], "lr": lr * scale, "weight_decay": wd})["params"].append(p)
        return list(groups.values())

    def forward(self, pixels: torch.Tensor):
        pooled, tokens = self.visual(pixels)
        local = tokens @ self.visual.proj
        g = Fn.normalize(pooled.float(), dim=-1)
        with torch.no_grad():
            teacher = self.teacher(pixels)
            teacher = teacher[0] if isinstance(teacher, tuple) else teacher
            teacher = Fn.normalize(teacher.float(), dim=-1)
        distill = (g - teacher).abs().mean()
        return g, local.float(), distill


def tail_state(backbone, spec: FinetuneSpec) -> dict[str, torch.Tensor]:
    """The fine-tuned tensors of ``backbone`` (what a run saves)."""
    params = dict(_visual(backbone)[0].named_parameters())
    return {name: params[name].detach().cpu().contiguous() for name in tail_names(backbone, spec.blocks)}


def apply_tail_state(backbone, tensors: dict[str, torch.Tensor]):
    """A copy of ``backbone`` carrying the fine-tuned ``tensors`` (the original is left alone)."""
    tuned = copy.deepcopy(backbone)
    params = dict(_visual(tuned)[0].named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ConfigError(f"fine-tuned backbone tensors {unknown[:3]} do not exist in this backbone")
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise ConfigError(f"fine-tuned tensor {name} has shape {tuple(value.shape)}, the backbone "
                                  f"{tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    return tuned.freeze() if hasattr(tuned, "freeze") else tuned
