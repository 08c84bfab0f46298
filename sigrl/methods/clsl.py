"""CLSL: collaborative learning — label recovery and feature learning in one loop.

Two things live here: :class:`CLSLLoss` (``loss.name: clsl``), the reference's per-step
soft filling of unknown labels from the main head's sharpened sigmoid into a second head
(its docstring has the math), and :class:`CollaborativeLabelRecovery`
(``method.name: clsl_threshold``), our thresholded variant between epochs, described below.

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

    name = "clsl_threshold"

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


# ============================================================================ the reference CLSL
def _asl_terms(logits: Tensor, target: Tensor, gamma_neg: float, gamma_pos: float, clip: float,
               eps: float) -> Tensor:
    """Per-entry asymmetric-loss terms (the sign as a loss: >= 0) for soft targets in [0, 1];
    the focal weight carries no gradient (the reference's ``disable_torch_grad_focal_loss``)."""
    p = torch.sigmoid(logits)
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    loss = -(target * torch.log(p.clamp(min=eps)) + (1.0 - target) * torch.log(p_neg.clamp(min=eps)))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            p_t = p * target + p_neg * (1.0 - target)
            weight = torch.pow(1.0 - p_t, gamma_pos * target + gamma_neg * (1.0 - target))
        loss = loss * weight
    return loss


class CLSLLoss(torch.nn.Module):
    """CLSL as its reference trains it: per-step soft filling of unknown labels.

    Source: Qingdandian/CLSL ``models/sarlp_clip.py`` (``SARLP.forward``, training branch
    with partial labels), ``lib/aslloss.py`` (``AsymmetricLossOptimized``), ``lib/util.py``
    (loss defaults). Our re-derivation (no code copied):

    Two heads share the trainable features. The main head's logits z1 (B, C) are what the
    model predicts (and what sigrl evaluates). A second head z0 reads the shared
    class-specific features F (B, C, D) (``extras["label_feats"]``): z0_bc = <w_c, F_bc> + b_c
    (a parameter of this loss). Each step:

        s_b   = max_c z1_bc                                   (per image)
        p1    = sigmoid(z1 * s_b)                             "sharpened" main-head probability
        y~    = y01 on known entries, sg(p1) on unknown ones  (soft filling)
        L     = ASL_known(z1, y01) + aux_weight * ASL_soft(z0, y~)
        ASL_known = scale * sum over known entries of the ASL terms   (``MASK=True``: a sum)
        ASL_soft  = scale * mean over all B*C entries of the ASL terms (soft targets)
        ASL terms: -(t log p + (1 - t) log p_neg) (1 - p_t)^(gamma_pos t + gamma_neg (1 - t)),
        p_neg = min(1, 1 - p + clip), p_t = t p + (1 - t) p_neg, logs clamped at eps,
        focal weight without gradient.

    y01 is 1 for observed +1 and 0 for observed -1. Reference defaults: gamma_neg=2,
    gamma_pos=0, clip=0, eps=1e-5, aux_weight=0.1, scale=1000.

    Differences from the reference, by construction: the second head is an element-wise
    linear map on our head's label-specific features, where the reference's ``fc0`` is a
    1x1 convolution on its trainable transformer's patch tokens with a top-1 over patches;
    what the two heads share is our head's trainable part (SVFR / adapter), not a
    fine-tuned CLIP encoder. ``filled`` (num_images, C) keeps each image's latest soft
    labels of its unknown entries (NaN where known or never seen), for inspection.

    Hyper-parameters: num_classes, embed_dim (context), num_images (context, optional);
    aux_weight=0.1, gamma_neg=2.0, gamma_pos=0.0, clip=0.0, eps=1e-5, scale=1000.0,
    sharpen=True (False: p1 = sigmoid(z1)).
    """

    name = "clsl"
    wants_extras = True

    def __init__(self, num_classes: int, embed_dim: int, num_images: int | None = None,
                 aux_weight: float = 0.1, gamma_neg: float = 2.0, gamma_pos: float = 0.0, clip: float = 0.0,
                 eps: float = 1e-5, scale: float = 1000.0, sharpen: bool = True):
        super().__init__()
        c, d = int(num_classes), int(embed_dim)
        if c < 1 or d < 1:
            raise ConfigError(f"clsl: needs num_classes and embed_dim >= 1, got {num_classes}, {embed_dim}")
        for key, value in (("aux_weight", aux_weight), ("gamma_neg", gamma_neg), ("gamma_pos", gamma_pos),
                           ("clip", clip), ("scale", scale)):
            if not float(value) >= 0:
                raise ConfigError(f"clsl: {key} must be >= 0, got {value!r}")
        if not 0 < float(eps) < 0.5:
            raise ConfigError(f"clsl: eps must be in (0, 0.5), got {eps!r}")
        self.num_classes, self.embed_dim = c, d
        self.aux_weight, self.gamma_neg, self.gamma_pos = float(aux_weight), float(gamma_neg), float(gamma_pos)
        self.clip, self.eps, self.scale, self.sharpen = float(clip), float(eps), float(scale), bool(sharpen)
        bound = 1.0 / float(d) ** 0.5
        self.aux_weight_vectors = torch.nn.Parameter(torch.empty(c, d).uniform_(-bound, bound))
        self.aux_bias = torch.nn.Parameter(torch.empty(c).uniform_(-bound, bound))
        self.register_buffer("filled", None if num_images is None else torch.full((int(num_images), c), float("nan")))
        self.stats: dict[str, float] = {}

    def aux_logits(self, feats: Tensor) -> Tensor:
        """The second head: (B, C) from F (B, C, D)."""
        return (feats * self.aux_weight_vectors).sum(-1) + self.aux_bias

    def soft_targets(self, logits: Tensor, observed: Tensor) -> Tensor:
        """y~ (B, C): 1 / 0 on known entries, the main head's (sharpened) probability on unknown ones."""
        z = logits.detach()
        p = torch.sigmoid(z * z.max(dim=1, keepdim=True).values) if self.sharpen else torch.sigmoid(z)
        return torch.where(observed != 0, (observed > 0).to(p.dtype), p)

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None, extras=None) -> Tensor:
        feats = None if extras is None else extras.get("label_feats")
        if feats is None:
            raise ConfigError("loss clsl needs the head's label-specific features (extras['label_feats'], "
                              "B x C x D): use a head with local features (head.class sigrl or adapter)")
        if logits.shape != observed.shape or feats.shape[:2] != logits.shape:
            raise ValueError(f"clsl: logits {tuple(logits.shape)}, observed {tuple(observed.shape)} and "
                             f"features {tuple(feats.shape)} must agree on (B, C)")
        observed = observed.to(logits.device)
        known = observed != 0
        y01 = (observed > 0).to(logits.dtype)
        main = _asl_terms(logits, y01, self.gamma_neg, self.gamma_pos, self.clip, self.eps)
        main = self.scale * main[known].sum()
        target = self.soft_targets(logits, observed)
        aux = _asl_terms(self.aux_logits(feats.to(logits.dtype)), target, self.gamma_neg, self.gamma_pos,
                         self.clip, self.eps)
        loss = main + self.aux_weight * self.scale * aux.mean()
        unknown = ~known
        if self.training and self.filled is not None and index is not None:
            from sigrl.methods.sst import gather_rows  # every process keeps every image's soft labels

            rows = gather_rows(torch.as_tensor(index, device=logits.device).long()).to(self.filled.device)
            soft = torch.where(unknown, target, torch.full_like(target, float("nan")))
            self.filled[rows] = gather_rows(soft).to(self.filled)
        self.stats = {"filled_over_half": int((unknown & (target > 0.5)).sum()), "unknown": int(unknown.sum())}
        return loss
