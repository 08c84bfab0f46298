"""Pairwise ranking loss of zero-shot multi-label training (MKT / SigRL).

Per image, every observed positive label should outscore every observed negative one::

    pairs(b)  = {(i, j) : targets[b, i] = +1 and targets[b, j] = -1}     (0 = unknown: ignored)
    loss(b)   = mean over pairs(b) of  max(0, margin - s[b, i] + s[b, j])      kind="hinge"
                                 or   softplus(margin - s[b, i] + s[b, j])      kind="softplus"
    loss      = mean of loss(b) over the images b that have at least one pair

Averaging per image first means an image with many labels does not outweigh one with
few. A batch without any (positive, negative) pair gives 0 (a graph-connected zero, so
``backward`` still works), never NaN.

Shapes:
    - **input:** ``logits`` (B, C), ``targets`` (B, C) with values in {-1, 0, +1}
    - **output:** scalar (``reduction="mean"``) or (B,) per-image losses
      (``reduction="none"``; 0 for images without pairs)
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import ConfigError, DataError, UsageError

KINDS = ("hinge", "softplus")
REDUCTIONS = ("mean", "none")


class RankingLoss(nn.Module):
    """Every observed positive should outscore every observed negative by ``margin``.

    Args:
        margin: the required gap between a positive's and a negative's score.
        kind: "hinge" (``max(0, margin - s_pos + s_neg)``) or "softplus" (its smooth version).
        reduction: "mean" (scalar) or "none" (per image).

    The forward builds the (B, C, C) pair tensor, which is fine for C up to a few
    thousand labels.
    """

    def __init__(self, margin: float = 1.0, kind: str = "hinge", reduction: str = "mean"):
        super().__init__()
        try:
            margin = float(margin)
        except (TypeError, ValueError):
            raise ConfigError(f"ranking loss: margin must be a number, got {margin!r}") from None
        if kind not in KINDS:
            raise ConfigError(f"ranking loss: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"ranking loss: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.margin, self.kind, self.reduction = margin, kind, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index=None, epoch=None) -> torch.Tensor:
        """``index`` and ``epoch`` are accepted (and ignored) so that every loss of
        :func:`sigrl.losses.build_loss` can be called the same way."""
        if logits.dim() != 2 or targets.shape != logits.shape:
            raise UsageError(f"ranking loss: logits and targets must both be (B, C), got "
                             f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        if bool(((targets != 0) & (targets != 1) & (targets != -1)).any()):
            raise DataError("ranking loss: targets must hold +1 (positive), -1 (negative) or 0 (unknown)")
        pos = targets > 0
        neg = targets < 0
        valid = pos[:, :, None] & neg[:, None, :]  # (B, C_pos, C_neg)
        diff = self.margin - logits[:, :, None] + logits[:, None, :]
        per_pair = diff.clamp_min(0) if self.kind == "hinge" else Fn.softplus(diff)
        per_pair = torch.where(valid, per_pair, torch.zeros_like(per_pair))  # no inf * 0
        n_pairs = valid.sum(dim=(1, 2))
        per_image = per_pair.sum(dim=(1, 2)) / n_pairs.clamp_min(1)
        if self.reduction == "none":
            return per_image
        has = n_pairs > 0
        if not bool(has.any()):
            return logits.sum() * 0.0
        return per_image[has].mean()
