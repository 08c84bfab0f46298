"""Epoch hooks: the work some methods do around the training loop, behind one protocol.

    hooks = epoch_hooks(cfg, model)                   chosen by loss.name and method.name
    facts = setup_hooks(hooks, scorer, exp)           once, before the first epoch
    targets = before_epoch(hooks, epoch, scorer, exp, accelerator, targets)   every epoch

=============  =====================================================================
hook           what it does
=============  =====================================================================
VLPL           before training: the frozen backbone (or the loss's own pseudo_backbone)
               scores every training image against every label (global cosine; the label
               names alone, or the plain prompts with text=prompts), the loss turns the scores
               into pseudo labels (``sigrl.methods.vlpl``); records their quality
EM+APL         before each labelled epoch after the warm-up: the current model scores the
               whole training part (eval mode, gathered from every process) and the loss
               assigns its pseudo negatives, the same on every process
label recovery before each epoch (SST, CLSL): the current model's scores (and global
               features) of the training part -> recovered training targets
=============  =====================================================================

Every hook sees the whole training part on every process, so several processes stay
identical to one.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch
import torch.nn.functional as Fn

from .config import Config
from .experiment import part_global_features
from .model import build_recovery
from .prompts import embed_labels
from .scorer import Scorer, score_part

__all__ = ["EpochHook", "epoch_hooks", "setup_hooks", "before_epoch"]


class EpochHook:
    """``setup(scorer, exp) -> dict`` once (facts for metrics.csv);
    ``before_epoch(epoch, scorer, exp, accelerator) -> (N, C) targets or None``."""

    def setup(self, scorer: Scorer, exp) -> dict:
        return {}

    def before_epoch(self, epoch: int, scorer: Scorer, exp, accelerator):
        return None


def _observed(exp) -> torch.Tensor:
    return torch.as_tensor(np.asarray(exp.train.targets), dtype=torch.float32)


class VLPLPseudoLabels(EpochHook):
    """VLPL: pseudo labels from the frozen backbone, once (module docstring).

    ``setup`` returns pseudo positives (and negatives) per image and, when the dataset's
    full labels are richer than the observed ones (simulated single-positive or partial
    labels), the precision of the pseudo positives and the share of the hidden positives
    they find (``pseudo_pos_precision``, ``pseudo_pos_recall``)."""

    def __init__(self, loss):
        self.loss = loss

    def setup(self, scorer: Scorer, exp) -> dict:
        backbone, part = exp.backbone, exp.train
        spec = getattr(self.loss, "pseudo_backbone", None)
        if spec:  # VLPL's own frozen scorer (its code: CLIP ViT-L/14-336), encoded live
            from .backbones import load_backbone

            backbone = load_backbone(spec["model"], spec.get("pretrained"), device=str(exp.backbone.device),
                                     preprocess=spec.get("preprocess"))
            part = dataclasses.replace(exp.train, features=None)
        # the label name alone (VLPL's label-only text features) or the run's plain prompts
        prompts = "{}" if getattr(self.loss, "text", "prompts") == "label" else exp.prompts
        with torch.no_grad():  # a tuned prompt context is not learnt yet
            feats = Fn.normalize(part_global_features(part, backbone).float(), dim=-1)
            emb = Fn.normalize(embed_labels(backbone, list(exp.train.labels), prompts).float().cpu(), dim=-1)
        observed = _observed(exp)
        targets = self.loss.fit_pseudo_labels(feats @ emb.t(), observed)
        stats = dict(getattr(self.loss, "stats", {}))
        full = torch.as_tensor(np.asarray(exp.train.split.targets)[exp.train.rows], dtype=torch.float32)
        pseudo_pos, hidden = (targets > 0) & (observed == 0), (full > 0) & (observed == 0)
        if hidden.any():
            stats["pseudo_pos_recall"] = float((pseudo_pos & hidden).sum() / hidden.sum())
            if pseudo_pos.any():
                stats["pseudo_pos_precision"] = float((pseudo_pos & hidden).sum() / pseudo_pos.sum())
        return stats


class PseudoLabelRefresh(EpochHook):
    """EM+APL: one pseudo-labelling round before each labelled epoch (module docstring).
    Left to itself the loss would label only its own process's images, and DDP's buffer
    broadcast would leave every rank with rank 0's half, so the trainer drives it."""

    def __init__(self, loss):
        self.loss = loss
        loss.auto_update = False

    def before_epoch(self, epoch: int, scorer: Scorer, exp, accelerator):
        if 0 < epoch and epoch >= self.loss.warmup_epochs:
            logits = score_part(scorer, exp.train, [list(exp.train.labels)], accelerator)[0]
            self.loss.assign_pseudo_labels(torch.sigmoid(logits), _observed(exp))
        return None


class LabelRecoveryHook(EpochHook):
    """SST / CLSL: the current model's scores of the whole training part -> targets."""

    def __init__(self, recovery):
        self.recovery = recovery

    def before_epoch(self, epoch: int, scorer: Scorer, exp, accelerator):
        scores = score_part(scorer, exp.train, [list(exp.train.labels)], accelerator)[0]
        feats = exp.train.features.global_features(exp.train.rows) if exp.train.features is not None else None
        targets = self.recovery.update(epoch, scores, feats, _observed(exp))
        return torch.as_tensor(targets, dtype=torch.float32).cpu()


# loss.name -> the hook its loss needs
LOSS_HOOKS = {"vlpl": VLPLPseudoLabels, "em_apl": PseudoLabelRefresh}


def epoch_hooks(cfg: Config, loss) -> list[EpochHook]:
    """The hooks of a run: its loss's (``LOSS_HOOKS``) and its label recovery (``method.name``)."""
    hooks: list[EpochHook] = []
    if cfg.loss.name in LOSS_HOOKS:
        hooks.append(LOSS_HOOKS[cfg.loss.name](loss))
    recovery = build_recovery(cfg)
    if recovery is not None:
        hooks.append(LabelRecoveryHook(recovery))
    return hooks


def setup_hooks(hooks: list[EpochHook], scorer: Scorer, exp, *, verbose: bool = True) -> dict:
    """Every hook's ``setup``; their facts merged (printed once when ``verbose``)."""
    facts: dict = {}
    for hook in hooks:
        facts.update(hook.setup(scorer, exp))
    if facts and verbose:
        print("sigrl train: pseudo labels: " + ", ".join(f"{k} {v:.3f}" for k, v in facts.items()), file=sys.stderr)
    return facts


def before_epoch(hooks: list[EpochHook], epoch: int, scorer: Scorer, exp, accelerator, targets):
    """Run every hook before ``epoch``; the latest targets any hook returned (else ``targets``)."""
    for hook in hooks:
        new = hook.before_epoch(epoch, scorer, exp, accelerator)
        if new is not None:
            targets = new
    return targets
