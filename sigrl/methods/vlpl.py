"""VLPL: vision-language pseudo labels for single-positive multi-label learning.

Source: Xing et al., "Vision-Language Pseudo-Labels for Single-Positive Multi-Label
Learning", arXiv:2310.15985, 2023 (code: github.com/mvrl/VLPL).

Idea: a frozen vision-language model (CLIP) scores every image against every label
name. Unobserved entries whose score is high become pseudo positives (optionally, the
lowest-scoring ones pseudo negatives); the classifier is then trained with the observed
positives, the weighted pseudo labels, and entropy maximisation (EM, Zhou et al. 2022)
on whatever is still unknown. Observed labels are never overwritten.

In the paper the score is a temperature softmax over the labels of the CLIP cosine
similarities, softmax_c(cos(image, label_c) / 0.01), thresholded at 0.3; pass
``temperature=0.01`` to :func:`vlpl_pseudo_labels` to reproduce that, or leave it None to
threshold the given scores directly (e.g. SigRL's normalised scores).

Which image and text features (mvrl/VLPL ``models.py`` ``ImageClassifier.forward``,
``main_clip.py``): a *separate* frozen CLIP (ViT-L/14 at 336 px, ``feature_extractor``)
embeds the image, L2-normalised; the text features are the label names alone
(``VOC20text_feature_labelonly.npy``, ``CoCo80text_feature_labelonly.npy``: no prompt
template); the trained network is another model. sigrl's trainer does the same with
``text="label"`` (default: the label name is the whole prompt) and, with
``pseudo_backbone={model, pretrained[, preprocess]}``, a second frozen backbone that only
scores the training images for the pseudo labels (encoded live, not cached). Without it
the run's own backbone scores them. ``text="prompts"`` is the earlier rule of sigrl: the
run's prompt set (e.g. "a photo of a {}.", averaged over templates). Our text features are
L2-normalised; whether VLPL's stored .npy features were cannot be read from its code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigrl.errors import ConfigError

__all__ = ["vlpl_pseudo_labels", "VLPLLoss"]


def _check_rule(pos_threshold, neg_threshold, neg_fraction, temperature) -> None:
    """ConfigError for a pseudo-label rule that cannot work."""
    if not math.isfinite(float(pos_threshold)):
        raise ConfigError(f"vlpl: pos_threshold must be a finite number, got {pos_threshold!r}")
    if neg_threshold is not None and not float(neg_threshold) < float(pos_threshold):
        raise ConfigError(f"vlpl: neg_threshold ({neg_threshold}) must be below pos_threshold ({pos_threshold})")
    if neg_fraction is not None and not (0.0 <= float(neg_fraction) <= 1.0):
        raise ConfigError(f"vlpl: neg_fraction must be in [0, 1], got {neg_fraction!r}")
    if temperature is not None and not float(temperature) > 0:
        raise ConfigError(f"vlpl: temperature must be > 0, got {temperature!r}")


def vlpl_pseudo_labels(
    scores: Tensor,
    observed: Tensor,
    *,
    pos_threshold: float,
    neg_threshold: float | None = None,
    neg_fraction: float | None = None,
    temperature: float | None = None,
) -> Tensor:
    """Merge observed labels with vision-language pseudo labels.

    Args:
        scores: (N, C) image-label similarity scores from the frozen backbone.
        observed: (N, C) in {+1, -1, 0}.
        pos_threshold: an unobserved entry with score > pos_threshold becomes +1.
        neg_threshold: if given, an unobserved entry with score < neg_threshold becomes -1.
        neg_fraction: if given, in each image the floor(neg_fraction * C) lowest-scoring
            labels become -1 where unobserved (the reference code's negative rule).
        temperature: if given, scores are first replaced by softmax over labels of
            scores / temperature (the paper: 0.01 on CLIP cosines, threshold 0.3).

    Returns:
        targets (N, C) in {+1, -1, 0}, dtype of ``scores`` (float): observed entries
        unchanged; pseudo positives win over pseudo negatives.
    """
    if scores.dim() != 2 or scores.shape != observed.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and observed {tuple(observed.shape)} must both be (N, C)"
        )
    _check_rule(pos_threshold, neg_threshold, neg_fraction, temperature)

    scores = scores.detach().float()
    if temperature is not None:
        scores = torch.softmax(scores / float(temperature), dim=1)
    unobserved = observed == 0
    positive = unobserved & (scores > float(pos_threshold))
    negative = torch.zeros_like(positive)
    if neg_threshold is not None:
        negative |= scores < float(neg_threshold)
    if neg_fraction is not None:
        k = int(math.floor(float(neg_fraction) * scores.shape[1]))
        if k > 0:
            lowest = scores.topk(k, dim=1, largest=False).indices
            negative |= torch.zeros_like(negative).scatter_(1, lowest, True)
    negative &= unobserved & ~positive
    targets = observed.to(torch.float32).clone()
    targets[positive] = 1.0
    targets[negative] = -1.0
    return targets.to(scores.dtype if scores.is_floating_point() else torch.float32)


class VLPLLoss(nn.Module):
    """The VLPL training loss (the paper's "EM + pseudo labels" objective).

    Per entry, with p = sigmoid(logit), s = ``smoothing``; sum / (B * C):
        observed positive   -> -log p
        observed negative   -> -log(1 - p)
        pseudo positive     -> beta_pos * [(1 - s) * -log p + s * -log(1 - p)]
        pseudo negative     -> beta_neg * [s * -log p + (1 - s) * -log(1 - p)]
        other unobserved    -> -alpha * H(p)   (``unobserved="em"``, the paper's choice:
                               entropy maximisation, Zhou et al. 2022)
                               or -log(1 - p)  (``unobserved="an"``: assume negative)

    Pseudo labels come from :func:`vlpl_pseudo_labels`, either passed per batch
    (``forward(..., pseudo=targets_of_the_batch)``) or stored once for the whole training
    set (the backbone is frozen, so they never change): build with ``num_images`` and
    ``num_classes``, call :meth:`fit_pseudo_labels` with the backbone's (N, C) image-label
    cosine similarities (the trainer does this before the first epoch when
    ``loss.name: vlpl``), or :meth:`set_pseudo_labels` with ready targets, and pass
    ``index``. They are a buffer, so they save with the state dict. Only entries
    unobserved in ``observed`` use them. Without pseudo labels the loss is EM (or AN).

    Hyper-parameters (defaults from the paper's code): alpha=0.1 (0.2 on VOC, 0.01 on
    CUB), beta_pos=0.7, beta_neg=0.0 (pseudo negatives off, as in the paper's results),
    smoothing=0.1, unobserved="em"; num_images, num_classes (optional, for stored labels);
    the pseudo-label rule of :meth:`fit_pseudo_labels`: pos_threshold=0.3 on
    softmax(cos / temperature) with temperature=0.01 (the paper), neg_threshold and
    neg_fraction (None: no pseudo negatives); which features score (module docstring):
    text="label" (the reference's label-only text) or "prompts" (the run's prompt set),
    pseudo_backbone=None (the run's backbone) or {model, pretrained, preprocess}.
    Source: Xing et al., "Vision-Language Pseudo-Labels for Single-Positive Multi-Label
    Learning", arXiv:2310.15985, 2023.
    """

    name = "vlpl"

    def __init__(
        self,
        num_images: int | None = None,
        num_classes: int | None = None,
        alpha: float = 0.1,
        beta_pos: float = 0.7,
        beta_neg: float = 0.0,
        smoothing: float = 0.1,
        unobserved: str = "em",
        pos_threshold: float = 0.3,
        temperature: float | None = 0.01,
        neg_threshold: float | None = None,
        neg_fraction: float | None = None,
        text: str = "label",
        pseudo_backbone: dict | str | None = None,
    ):
        super().__init__()
        if text not in ("label", "prompts"):
            raise ConfigError(f"vlpl: text must be one of: label, prompts (got {text!r})")
        if isinstance(pseudo_backbone, str):
            pseudo_backbone = {"model": pseudo_backbone}
        if pseudo_backbone is not None:
            if not isinstance(pseudo_backbone, dict) or "model" not in pseudo_backbone:
                raise ConfigError("vlpl: pseudo_backbone must be a model name/path or {model, pretrained, preprocess}")
            unknown = sorted(set(pseudo_backbone) - {"model", "pretrained", "preprocess"})
            if unknown:
                raise ConfigError(f"vlpl: pseudo_backbone has no key(s) {', '.join(unknown)}; "
                                  "valid keys: model, pretrained, preprocess")
            pseudo_backbone = dict(pseudo_backbone)
        self.text, self.pseudo_backbone = text, pseudo_backbone
        for key, value in (("alpha", alpha), ("beta_pos", beta_pos), ("beta_neg", beta_neg)):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ConfigError(f"vlpl: {key} must be a finite number >= 0, got {value!r}")
        if not (0.0 <= float(smoothing) < 0.5):
            raise ConfigError(f"vlpl: smoothing must be in [0, 0.5), got {smoothing!r}")
        if unobserved not in ("em", "an"):
            raise ConfigError(f"vlpl: unobserved must be one of: em, an (got {unobserved!r})")
        if (num_images is None) != (num_classes is None):
            raise ConfigError("vlpl: give both num_images and num_classes (to store pseudo labels) or neither")
        self.alpha, self.beta_pos, self.beta_neg = float(alpha), float(beta_pos), float(beta_neg)
        self.smoothing, self.unobserved = float(smoothing), unobserved
        self.rule = {"pos_threshold": pos_threshold, "neg_threshold": neg_threshold,
                     "neg_fraction": neg_fraction, "temperature": temperature}
        _check_rule(**self.rule)  # now: a config error must not wait for the first epoch
        self.stats: dict[str, float] = {}
        if num_images is not None:
            if int(num_images) < 1 or int(num_classes) < 1:
                raise ConfigError(f"vlpl: num_images and num_classes must be >= 1, got {num_images}, {num_classes}")
            self.register_buffer("pseudo_labels", torch.zeros(int(num_images), int(num_classes), dtype=torch.int8))
        else:
            self.pseudo_labels = None

    @torch.no_grad()
    def fit_pseudo_labels(self, scores: Tensor, observed: Tensor) -> Tensor:
        """Pseudo labels of the whole training set from the frozen backbone's scores.

        Args:
            scores: (N, C) cosine similarities image-label of the frozen backbone.
            observed: (N, C) in {+1, -1, 0}.
        Returns the (N, C) targets (also stored); ``self.stats`` counts the pseudo
        positives and negatives per image.
        """
        targets = vlpl_pseudo_labels(scores, observed, **self.rule)
        self.set_pseudo_labels(targets)
        unobs = observed == 0
        n = max(int(scores.shape[0]), 1)
        self.stats = {"pseudo_pos_per_image": float(((targets > 0) & unobs).sum()) / n,
                      "pseudo_neg_per_image": float(((targets < 0) & unobs).sum()) / n}
        return targets

    @torch.no_grad()
    def set_pseudo_labels(self, targets: Tensor, index: Tensor | None = None) -> None:
        """Store pseudo labels (targets from :func:`vlpl_pseudo_labels`) for images ``index``
        (default: all images, in dataset order)."""
        if self.pseudo_labels is None:
            raise ValueError("vlpl: build with num_images and num_classes to store pseudo labels")
        values = torch.sign(targets).to(torch.int8).to(self.pseudo_labels.device)
        if index is None:
            if values.shape != self.pseudo_labels.shape:
                raise ValueError(
                    f"vlpl: expected targets {tuple(self.pseudo_labels.shape)}, got {tuple(values.shape)}"
                )
            self.pseudo_labels.copy_(values)
        else:
            self.pseudo_labels[torch.as_tensor(index, device=values.device).long()] = values

    def forward(
        self,
        logits: Tensor,
        observed: Tensor,
        *,
        index: Tensor | None = None,
        epoch: int | None = None,
        pseudo: Tensor | None = None,
    ) -> Tensor:
        if logits.dim() != 2 or observed.shape != logits.shape:
            raise ValueError(f"logits and observed must both be (B, C), got {tuple(logits.shape)}, {tuple(observed.shape)}")
        if pseudo is None and index is not None and self.pseudo_labels is not None:
            pseudo = self.pseudo_labels[torch.as_tensor(index, device=self.pseudo_labels.device).long()]
        unobs = observed == 0
        if pseudo is None:
            pseudo_pos = pseudo_neg = torch.zeros_like(unobs)
        else:
            pseudo = pseudo.to(logits.device)
            pseudo_pos, pseudo_neg = unobs & (pseudo > 0), unobs & (pseudo < 0)
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        s = self.smoothing
        pos_pl = self.beta_pos * -((1 - s) * log_p + s * log_not_p)
        neg_pl = self.beta_neg * -(s * log_p + (1 - s) * log_not_p)
        if self.unobserved == "em":
            p = torch.sigmoid(logits)
            rest = self.alpha * (p * log_p + (1 - p) * log_not_p)  # = -alpha * H(p)
        else:
            rest = -log_not_p
        per_entry = torch.where(
            observed > 0,
            -log_p,
            torch.where(observed < 0, -log_not_p, torch.where(pseudo_pos, pos_pl, torch.where(pseudo_neg, neg_pl, rest))),
        )
        return per_entry.sum() / max(logits.numel(), 1)
