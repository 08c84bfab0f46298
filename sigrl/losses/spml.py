"""Losses for learning from single positive (and partial) labels.

Sources:
    Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021
        (full-label BCE, AN, WAN, EPR, ROLE);
    Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single
        Positive Labels", ECCV 2022 (EM, EM + APL);
    Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification",
        CVPR 2022 (LL-R, LL-Ct).

Conventions shared by every loss here:
    logits   (B, C) raw scores; p = sigmoid(logits).
    observed (B, C) in {+1, -1, 0}: observed positive, observed negative, unobserved.
    forward(logits, observed, *, index=None, epoch=None) -> scalar.
    index (B,) dataset indices (losses with per-image state: ROLE, EM+APL);
    epoch 0-based (LL-R, EM+APL).
Per-entry losses are summed and divided by B*C (the normalisation of Cole et al.), except
``FullLabelLoss``, which averages over the known entries. Observed negatives (-1) are
always a plain negative BCE term with weight 1; the SPML papers have none, partial
labels do. Log-probabilities are computed with ``logsigmoid`` (exact, no epsilon).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigrl.errors import ConfigError

__all__ = [
    "FullLabelLoss",
    "AssumeNegativeLoss",
    "WeightedAssumeNegativeLoss",
    "ExpectedPositiveRegularizationLoss",
    "OnlineLabelEstimationLoss",
    "EntropyMaximizationLoss",
    "AsymmetricPseudoLabelLoss",
    "LargeLossRejectionLoss",
    "binary_entropy",
]


# --------------------------------------------------------------------------- helpers
def _check_inputs(logits: Tensor, observed: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if observed.shape != logits.shape:
        raise ValueError(
            f"observed {tuple(observed.shape)} must have the shape of logits {tuple(logits.shape)}"
        )


def _masks(observed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean masks (positive, negative, unobserved) of an observed matrix."""
    return observed > 0, observed < 0, observed == 0


def _nonneg(name: str, value: float, loss: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{loss}: {name} must be a finite number >= 0, got {value!r}")
    return value


def _fraction(name: str, value: float, loss: str) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{loss}: {name} must be in [0, 1], got {value!r}")
    return value


def _require_index(index: Tensor | None, logits: Tensor, num_images: int, loss: str) -> Tensor:
    if index is None:
        raise ValueError(f"{loss} keeps per-image state: pass index=(B,) dataset indices")
    index = torch.as_tensor(index, device=logits.device).long().reshape(-1)
    if index.numel() != logits.shape[0]:
        raise ValueError(f"{loss}: index has {index.numel()} entries for a batch of {logits.shape[0]}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_images):
        raise ValueError(f"{loss}: index out of range [0, {num_images})")
    return index


def binary_entropy(logits: Tensor) -> Tensor:
    """H(p) = -p log p - (1 - p) log(1 - p) with p = sigmoid(logits), element-wise (nats)."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1.0 - p) * F.logsigmoid(-logits))


def _pos_term(logits: Tensor) -> Tensor:
    """-log p, element-wise."""
    return -F.logsigmoid(logits)


def _neg_term(logits: Tensor) -> Tensor:
    """-log(1 - p), element-wise."""
    return -F.logsigmoid(-logits)


def _expected_positive_reg(probs: Tensor, expected_num_pos: float) -> Tensor:
    """(mean over images of sum_c p_c  -  k)^2 / C^2  (Cole et al., squared-error version)."""
    num_classes = probs.shape[1]
    return (probs.sum(1).mean(0) - expected_num_pos) ** 2 / float(num_classes**2)


class _SPMLLoss(nn.Module):
    """Common checks; subclasses implement ``forward``."""

    name = "spml"

    def extra_repr(self) -> str:  # pragma: no cover - cosmetic
        keys = [k for k in getattr(self, "_hparams", ())]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)


# --------------------------------------------------------------------------- full
class FullLabelLoss(_SPMLLoss):
    """BCE on the known entries; unknown (0) entries are ignored.

    Formula: for every entry with target t != 0, loss = |t| * BCE(p, [t > 0]);
    the result is the sum divided by the number of known entries (0 if there are none).
    Targets may be soft in [-1, 1]: the sign is the label, the magnitude its weight
    (what :class:`sigrl.methods.LabelRecovery` objects return). With full labels this is
    the "full labels" upper bound of Cole et al. 2021; with partial labels it is the
    "BCE that ignores unknowns" of the partial-label papers.

    Hyper-parameters: none.
    Source: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.
    """

    name = "full"

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        target = observed.to(logits.dtype)
        weight = target.abs()
        per_entry = torch.where(target > 0, _pos_term(logits), _neg_term(logits)) * weight
        known = (target != 0).sum().clamp_min(1)
        return per_entry.sum() / known


# --------------------------------------------------------------------------- AN / WAN
class AssumeNegativeLoss(_SPMLLoss):
    """AN: "assume negative" — every unobserved entry is treated as a negative.

    Formula: observed positive -> -log p; observed negative or unobserved -> -log(1 - p);
    sum / (B * C).

    Hyper-parameters: none.
    Source: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.
    """

    name = "an"

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        pos, _, _ = _masks(observed)
        per_entry = torch.where(pos, _pos_term(logits), _neg_term(logits))
        return per_entry.sum() / max(logits.numel(), 1)


class WeightedAssumeNegativeLoss(_SPMLLoss):
    """WAN: weighted "assume negative" — assumed negatives are down-weighted.

    Formula: observed positive -> -log p; observed negative -> -log(1 - p);
    unobserved -> gamma * -log(1 - p) with gamma = 1 / (C - 1) (``neg_weight=None``) or the
    given ``neg_weight``; sum / (B * C).

    Hyper-parameters: neg_weight (float | None, default None = 1/(C-1), C from the logits).
    Source: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.
    """

    name = "wan"
    _hparams = ("neg_weight",)

    def __init__(self, neg_weight: float | None = None):
        super().__init__()
        self.neg_weight = None if neg_weight is None else _nonneg("neg_weight", neg_weight, "wan")

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        pos, neg, unobs = _masks(observed)
        num_classes = logits.shape[1]
        gamma = self.neg_weight if self.neg_weight is not None else 1.0 / max(num_classes - 1, 1)
        per_entry = torch.where(pos, _pos_term(logits), _neg_term(logits))
        weight = torch.where(unobs, torch.full_like(logits, gamma), torch.ones_like(logits))  # in the logits' dtype
        per_entry = per_entry * weight
        return per_entry.sum() / max(logits.numel(), 1)


# --------------------------------------------------------------------------- EPR
class ExpectedPositiveRegularizationLoss(_SPMLLoss):
    """EPR: BCE on the observed labels plus an expected-number-of-positives penalty.

    Formula: observed positive -> -log p, observed negative -> -log(1 - p), unobserved -> 0,
    sum / (B * C); plus  (mean over the batch of sum_c p_bc  -  k)^2 / C^2,
    where k = ``expected_num_pos`` (the average number of positives per image, e.g. 1.5
    on VOC, 2.5 on COCO, 1.9 on NUS-WIDE, 31.4 on CUB in Cole et al.'s ``train.py`` — a
    dataset statistic the user supplies).

    Hyper-parameters: expected_num_pos (float, required, >= 0).
    Source: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.
    """

    name = "epr"
    _hparams = ("expected_num_pos",)

    def __init__(self, expected_num_pos: float):
        super().__init__()
        self.expected_num_pos = _nonneg("expected_num_pos", expected_num_pos, "epr")

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        if logits.numel() == 0:
            return logits.sum() * 0.0
        pos, neg, _ = _masks(observed)
        zero = torch.zeros_like(logits)
        per_entry = torch.where(pos, _pos_term(logits), zero) + torch.where(neg, _neg_term(logits), zero)
        return per_entry.sum() / logits.numel() + _expected_positive_reg(
            torch.sigmoid(logits), self.expected_num_pos
        )


# --------------------------------------------------------------------------- ROLE
class OnlineLabelEstimationLoss(_SPMLLoss):
    """ROLE: regularised online label estimation.

    A learnable matrix of label estimates, one row per training image
    (``label_logits`` (num_images, num_classes), an ``nn.Parameter``: add this loss's
    parameters to the optimiser), is trained jointly with the classifier. With
    p = sigmoid(logits) and q = sigmoid(label_logits[index]), and sg() = stop-gradient:

        classifier: [observed pos] -log p  + BCE(p, target=sg(q))  + R(p)
        estimator:  [observed pos] -log q  + BCE(q, target=sg(p))  + R(q)
        loss = 0.5 * (classifier + estimator)

    where the per-entry terms are summed and divided by B*C and
    R(x) = (mean_b sum_c x_bc - k)^2 / C^2 is the EPR penalty with k = expected_num_pos.
    Observed negatives add -log(1 - p) and -log(1 - q) like the positives.

    Initialisation (as Cole et al.): unobserved estimates uniform in
    [logit(0.5 - w), logit(0.5 + w)] with w = ``init_width``; the first time an image is
    seen, its observed positives are set to logit(``init_pos``) and negatives to
    logit(1 - init_pos). The "seen" flags are a buffer, so the state dict holds all state.

    Optimiser (as Cole et al. ``train.py``: one Adam, the estimator's group at
    ``lr_mult`` x the classifier's lr): :meth:`param_groups` gives the label estimates
    their own group with lr ``lr_mult * lr`` and no weight decay, which the trainer's
    optimiser construction (:meth:`sigrl.model.TrainModule.param_groups`) uses. With
    weight decay 0, AdamW's update is exactly Adam's, so that group is plain Adam.

    Hyper-parameters: num_images, num_classes (required); expected_num_pos (float, required);
    init_pos=0.995; init_width=0.1; seed=0 (for the random initialisation); lr_mult=10.0
    (the reference's ``lr_mult``); estimator_weight_decay=0.0.
    Source: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.
    """

    name = "role"
    _hparams = ("num_images", "num_classes", "expected_num_pos")

    def __init__(
        self,
        num_images: int,
        num_classes: int,
        expected_num_pos: float,
        init_pos: float = 0.995,
        init_width: float = 0.1,
        seed: int = 0,
        lr_mult: float = 10.0,
        estimator_weight_decay: float = 0.0,
    ):
        super().__init__()
        self.lr_mult = float(lr_mult)
        if not (math.isfinite(self.lr_mult) and self.lr_mult > 0):
            raise ConfigError(f"role: lr_mult must be a finite number > 0, got {lr_mult!r}")
        self.estimator_weight_decay = _nonneg("estimator_weight_decay", estimator_weight_decay, "role")
        if int(num_images) < 1 or int(num_classes) < 1:
            raise ConfigError(f"role: num_images and num_classes must be >= 1, got {num_images}, {num_classes}")
        if not (0.5 < float(init_pos) < 1.0):
            raise ConfigError(f"role: init_pos must be in (0.5, 1), got {init_pos!r}")
        if not (0.0 <= float(init_width) < 0.5):
            raise ConfigError(f"role: init_width must be in [0, 0.5), got {init_width!r}")
        self.num_images, self.num_classes = int(num_images), int(num_classes)
        self.expected_num_pos = _nonneg("expected_num_pos", expected_num_pos, "role")
        self.init_logit = math.log(init_pos / (1.0 - init_pos))
        half = math.log((0.5 + init_width) / (0.5 - init_width))
        gen = torch.Generator().manual_seed(int(seed))
        init = (2.0 * torch.rand(self.num_images, self.num_classes, generator=gen) - 1.0) * half
        self.label_logits = nn.Parameter(init)
        self.register_buffer("seen", torch.zeros(self.num_images, dtype=torch.bool))

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """The label estimator's optimiser group: lr x ``lr_mult``, weight decay
        ``estimator_weight_decay`` (0: plain Adam, as Cole et al.), whatever the head's."""
        return [{"params": [self.label_logits], "lr": float(lr) * self.lr_mult,
                 "weight_decay": self.estimator_weight_decay, "name": "role_estimator"}]

    def estimated_labels(self) -> Tensor:
        """Current label estimates sigmoid(label_logits), (num_images, num_classes), detached."""
        return torch.sigmoid(self.label_logits.detach())

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"role: built for {self.num_classes} classes, got logits with {logits.shape[1]}")
        index = _require_index(index, logits, self.num_images, "role")
        pos, neg, _ = _masks(observed)
        fresh = ~self.seen[index]
        if bool(fresh.any()):  # observed-label initialisation, once per image
            with torch.no_grad():
                rows = index[fresh]
                block = self.label_logits.data[rows]
                block = torch.where(pos[fresh], torch.full_like(block, self.init_logit), block)
                block = torch.where(neg[fresh], torch.full_like(block, -self.init_logit), block)
                self.label_logits.data[rows] = block
                self.seen[rows] = True
        est_logits = self.label_logits[index].to(logits.dtype)
        p, q = torch.sigmoid(logits), torch.sigmoid(est_logits)
        zero = torch.zeros_like(logits)

        def observed_terms(x: Tensor) -> Tensor:
            return torch.where(pos, _pos_term(x), zero) + torch.where(neg, _neg_term(x), zero)

        def soft_bce(x: Tensor, target: Tensor) -> Tensor:
            return target * _pos_term(x) + (1.0 - target) * _neg_term(x)

        per_entry = observed_terms(logits) + soft_bce(logits, q.detach())
        per_entry = per_entry + observed_terms(est_logits) + soft_bce(est_logits, p.detach())
        reg = _expected_positive_reg(p, self.expected_num_pos) + _expected_positive_reg(q, self.expected_num_pos)
        return 0.5 * (per_entry.sum() / max(logits.numel(), 1) + reg)


# --------------------------------------------------------------------------- EM
class EntropyMaximizationLoss(_SPMLLoss):
    """EM: entropy maximisation on the unobserved entries.

    Formula: observed positive -> -log p; observed negative -> -log(1 - p);
    unobserved -> -alpha * H(p) with H(p) = -p log p - (1 - p) log(1 - p);
    sum / (B * C). Minimising -H pushes unobserved predictions toward 0.5 instead of
    toward 0 (as AN does), so a missing positive is not punished as a negative.

    Hyper-parameters: alpha (float, default 0.1; the paper uses 0.2 VOC, 0.1 COCO and
    NUS-WIDE, 0.01 CUB).
    Source: Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single
    Positive Labels", ECCV 2022.
    """

    name = "em"
    _hparams = ("alpha",)

    def __init__(self, alpha: float = 0.1):
        super().__init__()
        self.alpha = _nonneg("alpha", alpha, "em")

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        pos, neg, _ = _masks(observed)
        per_entry = torch.where(
            pos, _pos_term(logits), torch.where(neg, _neg_term(logits), -self.alpha * binary_entropy(logits))
        )
        return per_entry.sum() / max(logits.numel(), 1)


class AsymmetricPseudoLabelLoss(_SPMLLoss):
    """EM + APL: entropy maximisation plus asymmetric (negative-only) pseudo labels.

    Loss per entry, sum / (B * C):
        observed positive            -> -log p
        observed negative            -> -log(1 - p)
        pseudo negative (soft q)     -> beta * [q * -log p + (1 - q) * -log(1 - p)]
        other unobserved             -> -alpha * H(p)                    (EM)

    Pseudo labelling ("asymmetric": negatives only, because a random unobserved entry is
    far more likely a negative): at the start of every epoch e >= ``warmup_epochs``, for
    each class c, the ``floor(neg_proportion * U_c / (num_epochs - warmup_epochs))``
    still-unlabelled unobserved entries with the lowest predicted probability become
    pseudo negatives with soft label q = that probability (U_c: unobserved entries of
    class c). Over the run, up to ``neg_proportion`` of the unobserved entries of each
    class are labelled. Pseudo labels are kept for the rest of the run.

    The predictions used are those this loss saw for each image during the previous
    epoch (recorded in buffers from ``forward``; ``auto_update=True``). The reference
    re-scores the train set in eval mode after each epoch; a trainer can do the same and
    call :meth:`assign_pseudo_labels` itself (then pass ``auto_update=False``). sigrl's
    trainer does (:func:`sigrl.train.refresh_pseudo_labels`): with several processes each
    loss sees only its own images, so recorded predictions would cover a part of the set.
    All state (pseudo labels, recorded predictions) lives in buffers.

    Hyper-parameters: num_images, num_classes (required); num_epochs=10;
    warmup_epochs=5 (0-based epoch index of the first labelled epoch); alpha=0.1;
    beta=0.9; neg_proportion=0.9; auto_update=True. The paper's per-dataset settings:
    VOC alpha 0.2 beta 0.02 warm-up 5; COCO 0.1 / 0.9 / 5; NUS-WIDE 0.1 / 0.2 / 4;
    CUB 0.01 / 0.4 / 3; neg_proportion 0.9, 10 epochs.
    Source: Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single
    Positive Labels", ECCV 2022.
    """

    name = "em_apl"
    _hparams = ("alpha", "beta", "neg_proportion", "warmup_epochs", "num_epochs")

    def __init__(
        self,
        num_images: int,
        num_classes: int,
        num_epochs: int = 10,
        warmup_epochs: int = 5,
        alpha: float = 0.1,
        beta: float = 0.9,
        neg_proportion: float = 0.9,
        auto_update: bool = True,
    ):
        super().__init__()
        if int(num_images) < 1 or int(num_classes) < 1:
            raise ConfigError(f"em_apl: num_images and num_classes must be >= 1, got {num_images}, {num_classes}")
        if not (0 <= int(warmup_epochs) < int(num_epochs)):
            raise ConfigError(
                f"em_apl: need 0 <= warmup_epochs < num_epochs, got warmup_epochs={warmup_epochs}, num_epochs={num_epochs}"
            )
        self.num_images, self.num_classes = int(num_images), int(num_classes)
        self.num_epochs, self.warmup_epochs = int(num_epochs), int(warmup_epochs)
        self.alpha = _nonneg("alpha", alpha, "em_apl")
        self.beta = _nonneg("beta", beta, "em_apl")
        self.neg_proportion = _fraction("neg_proportion", neg_proportion, "em_apl")
        self.auto_update = bool(auto_update)
        n, c = self.num_images, self.num_classes
        self.register_buffer("pseudo_mask", torch.zeros(n, c, dtype=torch.bool))
        self.register_buffer("pseudo_target", torch.zeros(n, c))
        self.register_buffer("recorded_prob", torch.zeros(n, c))
        self.register_buffer("recorded_observed", torch.zeros(n, c, dtype=torch.int8))
        self.register_buffer("recorded", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("last_epoch", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def assign_pseudo_labels(self, probs: Tensor, observed: Tensor, index: Tensor | None = None) -> int:
        """One APL round: label the lowest-probability unobserved entries per class.

        probs (N, C) predicted probabilities and observed (N, C) for the images ``index``
        (default: all ``num_images`` in order). Returns the number of new pseudo negatives.
        """
        if index is None:
            index = torch.arange(self.num_images, device=self.pseudo_mask.device)
        index = torch.as_tensor(index, device=self.pseudo_mask.device).long().reshape(-1)
        probs = probs.to(self.pseudo_target.device, torch.float32)
        observed = observed.to(self.pseudo_target.device)
        unobserved = observed == 0
        candidates = unobserved & ~self.pseudo_mask[index]
        rounds = self.num_epochs - self.warmup_epochs
        per_class = torch.floor(self.neg_proportion * unobserved.sum(0).float() / rounds).long()
        added = 0
        masked = torch.where(candidates, probs, torch.full_like(probs, float("inf")))
        order = masked.argsort(dim=0, stable=True)  # ascending probability, per class
        for c in range(probs.shape[1]):
            k = min(int(per_class[c]), int(candidates[:, c].sum()))
            if k == 0:
                continue
            rows = order[:k, c]
            self.pseudo_mask[index[rows], c] = True
            self.pseudo_target[index[rows], c] = probs[rows, c]
            added += k
        return added

    def _maybe_update(self, epoch: int | None) -> None:
        if epoch is None or not self.auto_update:
            return
        epoch = int(epoch)
        if epoch <= int(self.last_epoch):
            return
        if epoch >= self.warmup_epochs and int(self.last_epoch) >= 0 and bool(self.recorded.any()):
            rows = self.recorded.nonzero().flatten()
            self.assign_pseudo_labels(self.recorded_prob[rows], self.recorded_observed[rows], rows)
        self.last_epoch.fill_(epoch)

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"em_apl: built for {self.num_classes} classes, got logits with {logits.shape[1]}")
        pos, neg, unobs = _masks(observed)
        pseudo = torch.zeros_like(unobs)
        soft = torch.zeros_like(logits)
        if index is not None:
            index = _require_index(index, logits, self.num_images, "em_apl")
            self._maybe_update(epoch)
            with torch.no_grad():
                self.recorded_prob[index] = torch.sigmoid(logits.detach()).to(self.recorded_prob.dtype)
                self.recorded_observed[index] = observed.to(torch.int8)
                self.recorded[index] = True
            pseudo = self.pseudo_mask[index] & unobs
            soft = self.pseudo_target[index].to(logits.dtype)
        apl = self.beta * (soft * _pos_term(logits) + (1.0 - soft) * _neg_term(logits))
        em = -self.alpha * binary_entropy(logits)
        per_entry = torch.where(
            pos, _pos_term(logits), torch.where(neg, _neg_term(logits), torch.where(pseudo, apl, em))
        )
        return per_entry.sum() / max(logits.numel(), 1)


# --------------------------------------------------------------------------- LL-R
class LargeLossRejectionLoss(_SPMLLoss):
    """LL-R: assume negative, but reject the largest losses among unobserved entries.

    Formula: AN per-entry losses (observed positive -> -log p, everything else ->
    -log(1 - p)); among the unobserved entries of the batch, the k largest losses are
    zeroed ("rejected": probably false negatives), with
        rate = min(1, epoch * delta_rel)   (epoch 0-based: no rejection in the first epoch)
        k    = ceil(rate * number of unobserved entries in the batch);
    sum / (B * C). With ``correct=True`` the k entries are instead relabelled positive for
    this step (LL-Ct, temporary correction).

    The reference counts k over all B*C entries; with single positive labels the
    unobserved count is B*(C-1), so the two agree up to one entry.

    Hyper-parameters: delta_rel (float, default 0.002 = 0.2% per epoch; the paper tunes
    it per dataset, e.g. 0.1%–0.5%); correct (bool, default False).
    Source: Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label
    Classification", CVPR 2022.
    """

    name = "ll_r"
    _hparams = ("delta_rel", "correct")

    def __init__(self, delta_rel: float = 0.002, correct: bool = False):
        super().__init__()
        self.delta_rel = _fraction("delta_rel", delta_rel, "ll_r")
        self.correct = bool(correct)

    def rejection_rate(self, epoch: int) -> float:
        """Fraction of unobserved entries rejected at ``epoch`` (0-based)."""
        return min(1.0, max(0, int(epoch)) * self.delta_rel)

    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None) -> Tensor:
        _check_inputs(logits, observed)
        if epoch is None:
            raise ValueError("ll_r needs the epoch: call loss(logits, observed, epoch=<0-based epoch>)")
        pos, _, unobs = _masks(observed)
        per_entry = torch.where(pos, _pos_term(logits), _neg_term(logits))
        n_unobs = int(unobs.sum())
        k = math.ceil(self.rejection_rate(epoch) * n_unobs - 1e-9)
        if k > 0:
            flat = torch.where(unobs, per_entry.detach(), torch.full_like(per_entry, -float("inf"))).flatten()
            top = flat.topk(k).indices
            reject = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            reject[top] = True
            reject = reject.view_as(per_entry)
            replacement = _pos_term(logits) if self.correct else torch.zeros_like(per_entry)
            per_entry = torch.where(reject, replacement, per_entry)
        return per_entry.sum() / max(logits.numel(), 1)
