"""Asymmetric loss (ASL; Ridnik, Ben-Baruch et al., ICCV 2021), the loss DualCoOp trains with.

For a logit z of one (image, label) entry, p = sigmoid(z) (for DualCoOp, the two-way
softmax over {negative, positive} prompt scores: the same number). With a probability
margin m ("asymmetric clipping", shifts the negatives' probability down) and focusing
exponents gamma+ and gamma-::

    p_m  = max(p - m, 0)
    L+   = (1 - p)^gamma+ · log(p)                 an observed positive
    L-   = p_m^gamma-     · log(1 - p_m)           a negative
    loss = - mean over images of  sum over labels of  (y+ L+ + y- L-)

Easy negatives (p < m) give exactly zero loss and gradient; the others are down-weighted by
p_m^gamma-. The focusing weights are part of the formula (gradients flow through them, as
the paper's gradient analysis). Paper defaults: gamma+ = 0, gamma- = 4, m = 0.05.

``observed`` (B, C) holds +1 / -1 / 0 (unobserved). ``unobserved="negative"`` (default,
ASL's own setting: a missing label is a negative, the margin and focusing discount the
ones that are in fact positive) counts 0 entries as negatives; ``"ignore"`` leaves them out
(the partial-label setting of DualCoOp, where each known label is a +1 or a -1).

Reduction: the sum over labels, averaged over the images of the batch (the reference sums
over the batch too; the mean keeps the learning rate independent of the batch size).
Logs are taken in the stable form: log p = logsigmoid(z), log(1 - p_m) = log(min(1, 1 - p + m))
with 1 - p = sigmoid(-z), clamped at ``eps``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import ConfigError

__all__ = ["AsymmetricLoss"]


class AsymmetricLoss(nn.Module):
    """ASL (module docstring).

    Args:
        gamma_pos: gamma+ (focusing of positives; 0 = plain log-likelihood).
        gamma_neg: gamma- (focusing of negatives).
        clip: the probability margin m (0 switches it off).
        eps: the smallest probability inside a log.
        unobserved: "negative" or "ignore" (what 0 entries of ``observed`` are).
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                 unobserved: str = "negative"):
        super().__init__()
        if gamma_pos < 0 or gamma_neg < 0:
            raise ConfigError(f"loss asl: gamma_pos and gamma_neg must be >= 0, got {gamma_pos}, {gamma_neg}")
        if not 0 <= clip < 1:
            raise ConfigError(f"loss asl: clip must be in [0, 1), got {clip}")
        if unobserved not in ("negative", "ignore"):
            raise ConfigError(f"loss asl: unobserved must be 'negative' or 'ignore', got {unobserved!r}")
        self.gamma_pos, self.gamma_neg, self.clip, self.eps = float(gamma_pos), float(gamma_neg), float(clip), float(eps)
        self.unobserved = unobserved

    def forward(self, logits: torch.Tensor, observed: torch.Tensor, *, index=None, epoch=None) -> torch.Tensor:
        z = logits.float()
        y_pos = (observed > 0).to(z.dtype)
        y_neg = ((observed < 0) if self.unobserved == "ignore" else (observed <= 0)).to(z.dtype)
        p = torch.sigmoid(z)
        log_p = Fn.logsigmoid(z).clamp(min=torch.log(torch.tensor(self.eps)).item())
        loss_pos = log_p if self.gamma_pos == 0 else (1 - p).pow(self.gamma_pos) * log_p
        if self.clip > 0:
            one_minus_pm = (torch.sigmoid(-z) + self.clip).clamp(max=1.0)  # 1 - max(p - m, 0)
            p_m = 1 - one_minus_pm
            log_q = torch.log(one_minus_pm.clamp(min=self.eps))
        else:
            p_m = p
            log_q = Fn.logsigmoid(-z).clamp(min=torch.log(torch.tensor(self.eps)).item())
        loss_neg = log_q if self.gamma_neg == 0 else p_m.pow(self.gamma_neg) * log_q
        return -(y_pos * loss_pos + y_neg * loss_neg).sum(dim=1).mean()
