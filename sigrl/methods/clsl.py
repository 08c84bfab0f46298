"""CLSL: collaborative learning — label recovery and feature learning in one loop.

Source: He, Xie, Li, Liu, Hu, "Collaborative Learning of Semantic-Aware Feature Learning
and Label Recovery for Multi-Label Image Recognition with Incomplete Labels",
arXiv:2510.10055, 2025 (code: github.com/Qingdandian/CLSL); the loop follows the
HCP-MLR-PL family of partial-label methods. Recovered labels train the features, and
better features recover more labels. This module is the label-recovery half of that
loop: the model's own scores recover unknown labels under a confidence threshold that
follows a schedule. Difference from the reference code: there, unknown entries are filled
with another head's predicted probability (soft labels, no threshold) at every step; here
recovery happens between epochs under a scheduled threshold (a controllable, inspectable
variant); ``soft=True`` keeps the predicted confidence as the label weight.

With p = sigmoid(score) (or the score itself when ``scores_are_logits=False``) and the
epoch-dependent thresholds

    t_pos(e) = linear_schedule(e, pos_start, pos_end, start_epoch, ramp_epochs)  (non-increasing)
    t_neg(e) = linear_schedule(e, neg_start, neg_end, start_epoch, ramp_epochs)  (non-decreasing)

an unknown entry with p >= t_pos(e) becomes +1 and, if negatives are enabled
(``neg_start`` given), one with p <= t_neg(e) becomes -1. Before ``start_epoch`` nothing is
recovered. With ``soft=True`` a recovered entry carries its confidence (p for a positive,
-(1 - p) for a negative) instead of +-1; ``FullLabelLoss`` reads the magnitude as a weight.
So the threshold starts strict and relaxes to a floor: the head trained on recovered
labels becomes more confident, and a more confident head recovers more labels.

Observed labels are never changed. Features are not used.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sigrl.errors import ConfigError
from sigrl.methods import LabelRecovery

__all__ = ["linear_schedule", "CollaborativeLabelRecovery"]


def linear_schedule(epoch: int, start: float, end: float, start_epoch: int = 0, ramp_epochs: int = 10) -> float:
    """``start`` until ``start_epoch``, then linear to ``end`` over ``ramp_epochs``, then ``end``."""
    if ramp_epochs <= 0:
        return float(end) if epoch >= start_epoch else float(start)
    t = min(max((int(epoch) - int(start_epoch)) / float(ramp_epochs), 0.0), 1.0)
    return float(start) + (float(end) - float(start)) * t


class CollaborativeLabelRecovery(LabelRecovery):
    """Self-recovery of unknown labels with a relaxing confidence threshold.

    Hyper-parameters: pos_start=0.95, pos_end=0.75 (floor), neg_start=None (negatives off),
    neg_end=None (defaults to neg_start), start_epoch=1, ramp_epochs=10,
    scores_are_logits=True, soft=False.
    """

    name = "clsl"

    def __init__(
        self,
        pos_start: float = 0.95,
        pos_end: float = 0.75,
        neg_start: float | None = None,
        neg_end: float | None = None,
        start_epoch: int = 1,
        ramp_epochs: int = 10,
        scores_are_logits: bool = True,
        soft: bool = False,
    ):
        super().__init__()
        pos_start, pos_end = float(pos_start), float(pos_end)
        if not (0.0 < pos_end <= pos_start <= 1.0):
            raise ConfigError(f"clsl: need 0 < pos_end <= pos_start <= 1, got pos_start={pos_start}, pos_end={pos_end}")
        if neg_start is None and neg_end is not None:
            raise ConfigError("clsl: neg_end needs neg_start (negatives are off without it)")
        if neg_start is not None:
            neg_start = float(neg_start)
            neg_end = neg_start if neg_end is None else float(neg_end)
            if not (0.0 <= neg_start <= neg_end < pos_end):
                raise ConfigError(
                    f"clsl: need 0 <= neg_start <= neg_end < pos_end, got {neg_start}, {neg_end}, {pos_end}"
                )
        if int(start_epoch) < 0 or int(ramp_epochs) < 0:
            raise ConfigError("clsl: start_epoch and ramp_epochs must be >= 0")
        self.pos_start, self.pos_end = pos_start, pos_end
        self.neg_start, self.neg_end = neg_start, neg_end
        self.start_epoch, self.ramp_epochs = int(start_epoch), int(ramp_epochs)
        self.scores_are_logits, self.soft = bool(scores_are_logits), bool(soft)

    def thresholds(self, epoch: int) -> tuple[float, float | None]:
        """(positive threshold, negative threshold or None) used at ``epoch``."""
        pos = linear_schedule(epoch, self.pos_start, self.pos_end, self.start_epoch, self.ramp_epochs)
        neg = None
        if self.neg_start is not None:
            neg = linear_schedule(epoch, self.neg_start, self.neg_end, self.start_epoch, self.ramp_epochs)
        return pos, neg

    @torch.no_grad()
    def update(self, epoch: int, scores: Tensor | None, features: Tensor | None, observed: Tensor) -> Tensor:
        if scores is None or scores.shape != observed.shape or scores.dim() != 2:
            raise ValueError(
                f"clsl: scores must be (N, C) like observed {tuple(observed.shape)}, got "
                f"{None if scores is None else tuple(scores.shape)}"
            )
        targets = observed.float().clone()
        unknown = observed == 0
        pos_thr, neg_thr = self.thresholds(epoch)
        prob = torch.sigmoid(scores.float()) if self.scores_are_logits else scores.float()
        prob = prob.to(targets.device)
        if int(epoch) < self.start_epoch:
            pos = neg = torch.zeros_like(unknown)
        else:
            pos = unknown & (prob >= pos_thr)
            neg = unknown & ~pos & (prob <= neg_thr) if neg_thr is not None else torch.zeros_like(unknown)
        if self.soft:
            targets[pos] = prob[pos]
            targets[neg] = -(1.0 - prob[neg])
        else:
            targets[pos] = 1.0
            targets[neg] = -1.0
        self.stats = {
            "recovered_pos": int(pos.sum()),
            "recovered_neg": int(neg.sum()),
            "unknown": int(unknown.sum()),
            "pos_threshold": pos_thr,
            "neg_threshold": -1.0 if neg_thr is None else neg_thr,
        }
        return targets
