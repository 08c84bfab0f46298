"""Conditional transport between label-specific visual features and label embeddings.

Sources: Xie, He, Li, Liu, Hu, "Semantic-Aware Representation Learning via Conditional
Transport for Multi-Label Image Classification" (SCT), arXiv:2507.14918, 2025; the
bidirectional conditional-transport (CT) cost of Zheng & Zhou, "Exploiting Chain Rule and
Bayes' Theorem to Compare Probability Distributions", NeurIPS 2021, as used for
multi-label recognition by PatchCT (Li et al., ICCV 2023).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigrl.errors import ConfigError

__all__ = ["ConditionalTransportLoss"]


class ConditionalTransportLoss(nn.Module):
    """Bidirectional conditional-transport cost between two sets of vectors per image.

    For image b, the visual set is the label-specific features F[b, c] (SVFR step 1) and
    the text set is the label embeddings T[c], restricted to the labels with weight
    w[b, c] > 0 (e.g. the observed positives or the top-scored labels; all labels when
    ``weights`` is None). With s(c, c') = cos(F[b, c], T[c']) and cost K = 1 - s:

        forward  (visual c -> text c'):  pi_f(c' | c) = w_c' exp(s(c, c') / tau) / sum_c'' (same)
        backward (text c' -> visual c):  pi_b(c | c') = w_c  exp(s(c, c') / tau) / sum_c'' (same)
        cost_b = sum_c  w~_c  sum_c' pi_f(c' | c) K(c, c')
               + sum_c' w~_c' sum_c  pi_b(c | c') K(c, c'),      w~ = w / sum(w)

    and the loss is the mean of cost_b over images with at least one selected label
    (0, still differentiable, when there is none). Each navigator is a softmax
    conditioned on its source, weighted by the target's prior w, as in CT.
    The cost is near 0 when every selected feature equals its label's embedding and the
    labels are far apart; it is a set-to-set cost, so it does not change when the
    selected features are permuted among themselves.

    Shapes:
        label_feats (B, C, D), label_emb (C, D), weights (B, C) >= 0 or None -> scalar.
    Hyper-parameters: tau (float > 0, default 0.1), the softmax temperature.
    Source: SCT (arXiv:2507.14918); CT (Zheng & Zhou, NeurIPS 2021).
    """

    def __init__(self, tau: float = 0.1):
        super().__init__()
        tau = float(tau)
        if not (math.isfinite(tau) and tau > 0):
            raise ConfigError(f"transport: tau must be a finite number > 0, got {tau!r}")
        self.tau = tau

    def extra_repr(self) -> str:  # pragma: no cover - cosmetic
        return f"tau={self.tau}"

    def forward(self, label_feats: Tensor, label_emb: Tensor, weights: Tensor | None = None) -> Tensor:
        if label_feats.dim() != 3:
            raise ValueError(f"label_feats must be (B, C, D), got {tuple(label_feats.shape)}")
        B, C, D = label_feats.shape
        if label_emb.shape != (C, D):
            raise ValueError(f"label_emb must be (C, D) = {(C, D)}, got {tuple(label_emb.shape)}")
        if weights is None:
            weights = label_feats.new_ones(B, C)
        elif weights.shape != (B, C):
            raise ValueError(f"weights must be (B, C) = {(B, C)}, got {tuple(weights.shape)}")
        weights = weights.to(label_feats.dtype).clamp_min(0.0)

        feats = F.normalize(label_feats, dim=-1)
        emb = F.normalize(label_emb.to(label_feats.dtype), dim=-1)
        sim = torch.einsum("bcd,kd->bck", feats, emb)  # (B, C_visual, C_text)
        cost = 1.0 - sim

        selected = weights > 0  # (B, C)
        has_any = selected.any(dim=1)  # (B,)
        # log-prior of each label; unselected labels are excluded (-inf). Images without any
        # selected label get finite logits (their cost is dropped below), so no NaN appears.
        log_prior = torch.where(selected, weights.clamp_min(1e-30).log(), torch.full_like(weights, -math.inf))
        log_prior = torch.where(has_any.unsqueeze(1), log_prior, torch.zeros_like(log_prior))
        logits = sim / self.tau

        fwd_plan = torch.softmax(logits + log_prior.unsqueeze(1), dim=2)  # over text c', given visual c
        bwd_plan = torch.softmax(logits + log_prior.unsqueeze(2), dim=1)  # over visual c, given text c'
        marginal = weights / weights.sum(1, keepdim=True).clamp_min(1e-30)  # (B, C)
        fwd = (marginal * (fwd_plan * cost).sum(2)).sum(1)
        bwd = (marginal * (bwd_plan * cost).sum(1)).sum(1)
        per_image = torch.where(has_any, fwd + bwd, torch.zeros_like(fwd))
        return per_image.sum() / has_any.sum().clamp_min(1)
