"""Pairwise ranking loss of zero-shot multi-label training (BiAM / MKT / SigRL).

Per image, every observed positive label should outscore every observed negative one::

    pairs(b)  = {(i, j) : targets[b, i] = +1 and targets[b, j] = -1}     (0 = unknown: ignored)
    h(b,i,j)  = max(0, margin - s[b, i] + s[b, j])                        kind="hinge"
             or softplus(margin - s[b, i] + s[b, j])                      kind="softplus"
    viol(b)   = {(i, j) in pairs(b) : margin - s[b, i] + s[b, j] > 0}     the violating pairs

    normalize="violating" (default, the reference):
        loss(b) = sum over pairs(b) of h / |viol(b)|     (0 when no pair violates)
        loss    = mean of loss(b) over ALL images of the batch
    normalize="pairs" (ours):
        loss(b) = mean over pairs(b) of h
        loss    = mean of loss(b) over the images b that have at least one pair

The default is the formula of MKT ``models/rank_loss.py`` ``ranking_lossT`` (from
BiAM): hinge with margin 1 summed over the pairs of an image, divided by the number of
violating pairs (the reference adds 1e-8 to that count; here an image with none gives
0 exactly), averaged over every image of the batch. Dividing by the violating pairs keeps
the gradient of an almost solved image as large as that of a hard one; "pairs" averages
it away instead. A batch without any pair gives 0 (a graph-connected zero, so
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
NORMALIZES = ("violating", "pairs")


class RankingLoss(nn.Module):
    """Every observed positive should outscore every observed negative by ``margin``.

    Args:
        margin: the required gap between a positive's and a negative's score.
        kind: "hinge" (``max(0, margin - s_pos + s_neg)``) or "softplus" (its smooth version).
        reduction: "mean" (scalar) or "none" (per image).
        normalize: "violating" (per image, divide by the number of violating pairs, then
            the mean over all images: the BiAM/MKT reference) or "pairs" (per image, the
            mean over its pairs, then the mean over the images that have pairs).

    The forward builds the (B, C, C) pair tensor, which is fine for C up to a few
    thousand labels.
    """

    def __init__(self, margin: float = 1.0, kind: str = "hinge", reduction: str = "mean",
                 normalize: str = "violating"):
        super().__init__()
        try:
            margin = float(margin)
        except (TypeError, ValueError):
            raise ConfigError(f"ranking loss: margin must be a number, got {margin!r}") from None
        if kind not in KINDS:
            raise ConfigError(f"ranking loss: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"ranking loss: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if normalize not in NORMALIZES:
            raise ConfigError(f"ranking loss: normalize must be one of {', '.join(NORMALIZES)}, got {normalize!r}")
        self.margin, self.kind, self.reduction, self.normalize = margin, kind, reduction, normalize

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
        if self.normalize == "violating":
            n_viol = (valid & (diff > 0)).sum(dim=(1, 2))
            per_image = per_pair.sum(dim=(1, 2)) / n_viol.clamp_min(1)
            if self.reduction == "none":
                return per_image
            return per_image.mean()
        n_pairs = valid.sum(dim=(1, 2))
        per_image = per_pair.sum(dim=(1, 2)) / n_pairs.clamp_min(1)
        if self.reduction == "none":
            return per_image
        has = n_pairs > 0
        if not bool(has.any()):
            return logits.sum() * 0.0
        return per_image[has].mean()
