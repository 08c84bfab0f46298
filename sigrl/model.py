"""What a run trains: the label text, the head and the loss, as one module.

    text   = build_learner(cfg, backbone, prompts, labels)   label names -> T (C, D) (prompts.learner)
    model  = TrainModule(head, text, loss)           (g, L, labels, observed) -> scalar loss
    logits = model(g, L, labels)                      (B, C), for scoring (sigrl.scorer)

``head.class: none`` trains the prompt learner alone (CoOp / DualCoOp): the logits are the
learner's own scores (:meth:`~sigrl.modules.prompt_learner.PromptLearner.score`).

The backbone is never a submodule: it is frozen, shared, and never saved with a run;
the head consumes the backbone's features (from the cache or encoded live).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .checkpoint import build_head as make_head
from .config import Config
from .errors import ConfigError
from .finetune import FinetunedTail, FinetuneSpec
from .losses import build_loss as make_loss
from .losses.transport import ConditionalTransportLoss
from .methods import build_recovery as make_recovery
from .modules.prompt_learner import FixedPrompts, PromptLearner, build_learner

__all__ = ["LabelText", "TrainModule", "build_model", "build_head", "build_recovery", "lr_lambda"]


#: label names -> T (C, D) with hand-written prompts; the learners (coop, csc, dualcoop) live
#: in sigrl.modules.prompt_learner and sigrl.modules.dualcoop
LabelText = FixedPrompts


class TrainModule(nn.Module):
    """What is trained, as one module (so Accelerate/DDP syncs all of it): the head, the
    prompt context (in ``text``) and the loss's own state (e.g. ROLE's label estimates).

    ``forward(g (B,D), l (B,P,D), labels)`` -> logits (B, C);
    with ``observed`` (B, C) -> the scalar loss: ``loss(logits, observed)``, plus
    ``transport_weight`` x the conditional-transport cost (SCT) between the head's
    label-specific features F (B, C, D) and the label embeddings T (C, D) when a
    ``transport`` loss is given. Each image transports its observed (or recovered)
    positives (``transport_labels="observed"``), or every label weighted by the model's
    own detached probability (``"predicted"``)."""

    def __init__(self, head: nn.Module | None, text: PromptLearner, loss: nn.Module | None = None, *,
                 transport: nn.Module | None = None, transport_weight: float = 0.0,
                 transport_labels: str = "observed", visual: FinetunedTail | None = None):
        super().__init__()
        self.head, self.text, self.loss = head, text, loss
        self.transport = transport if transport is not None and transport_weight > 0 else None
        self.transport_weight, self.transport_labels = float(transport_weight), transport_labels
        self.visual = visual  # the paper's regime: trained ViT blocks (then forward takes pixels)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: a submodule with its own rule (a loss or a
        backbone part defining ``param_groups(lr, weight_decay)``, e.g. ROLE's label
        estimates or the fine-tuned ViT blocks' layer-wise lr decay) gives its groups;
        every other trainable parameter trains at ``lr`` with ``weight_decay``."""
        groups, claimed = [], set()
        for part in self.children():
            if hasattr(part, "param_groups"):
                for group in part.param_groups(lr, weight_decay):
                    group["params"] = [p for p in group["params"] if p.requires_grad]
                    if group["params"]:
                        groups.append(group)
                        claimed |= {id(p) for p in group["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay}] + groups

    def forward(self, g, l, labels, observed=None, *, index=None, epoch=None, pixels=None):
        distill = 0.0
        if self.visual is not None:  # fine-tuning: encode here, so the ViT blocks get gradients
            g, l, distill = self.visual(pixels)
            distill = self.visual.spec.distill_weight * distill
        if self.head is None:  # the prompts alone: the learner scores
            if self.transport is not None:
                raise ConfigError("loss.transport_weight needs a head's label-specific features; head.class=none "
                                  "has none (set loss.transport_weight=0)")
            logits = self.text.score(g, l, list(labels))
            if observed is None:
                return logits
            return self.loss(logits.float(), observed, index=index, epoch=epoch) + distill
        T = self.text(labels)
        wants_extras = getattr(self.loss, "wants_extras", False)  # per-step SST / CLSL: label features
        if observed is None or (self.transport is None and not wants_extras):
            logits = self.text.combine_with_head(self.head(g, l, T, label_names=list(labels)), g, l, list(labels))
            if observed is None:
                return logits
            return self.loss(logits.float(), observed, index=index, epoch=epoch) + distill
        logits, extras = self.head(g, l, T, label_names=list(labels), return_extras=True)
        logits = self.text.combine_with_head(logits, g, l, list(labels))
        if wants_extras:
            loss = self.loss(logits.float(), observed, index=index, epoch=epoch, extras=extras) + distill
        else:
            loss = self.loss(logits.float(), observed, index=index, epoch=epoch) + distill
        if self.transport is None:
            return loss
        feats = extras.get("label_feats")
        if feats is None:
            raise ConfigError(f"loss.transport_weight: head {type(self.head).__name__} returns no label-specific "
                              "features (it needs local features); set loss.transport_weight=0")
        if self.transport_labels == "observed":
            weights = (observed > 0).float()
        else:
            weights = torch.sigmoid(logits.detach().float())
        return loss + self.transport_weight * self.transport(feats.float(), T.float(), weights)


def build_head(cfg: Config, exp) -> nn.Module | None:
    """``head.class`` with ``head.options`` (None for "none": the prompts alone); a head with
    a label prior (graph="cooc") gets the co-occurrence of the observed training positives."""
    if cfg.head.head_class == "none":
        return None
    head = make_head(cfg.head.head_class, exp.backbone.embed_dim, cfg.head.options)
    if hasattr(head, "set_label_prior"):
        pos = torch.as_tensor(np.asarray(exp.train.targets) == 1, dtype=torch.float32)
        head.set_label_prior(list(exp.train.labels), pos.t() @ pos, pos.sum(0))
    return head


def build_model(cfg: Config, exp) -> TrainModule:
    """The run's TrainModule: head (or none), prompt learner (``prompts.learner``), loss
    (``loss.name``) and the optional conditional-transport term."""
    generator = torch.Generator().manual_seed(cfg.train.seed)
    text = build_learner(cfg, exp.backbone, exp.prompts, list(exp.train.labels), zero_shot=exp.zero_shot,
                         generator=generator)
    head = build_head(cfg, exp)  # before the loss: both may draw from the global RNG, in this order
    loss = make_loss(cfg.loss.name, num_images=len(exp.train), num_classes=len(exp.train.labels),
                     num_epochs=cfg.train.epochs, embed_dim=exp.backbone.embed_dim,
                     # batches per epoch of the trainer's loader (drop_last when there is a full batch)
                     steps_per_epoch=max(1, len(exp.train) // cfg.train.batch_size), **cfg.loss.options)
    transport = ConditionalTransportLoss(tau=cfg.loss.transport_tau) if cfg.loss.transport_weight > 0 else None
    finetune = FinetuneSpec.from_dict(cfg.backbone.finetune)
    visual = FinetunedTail(exp.backbone, finetune) if finetune.enabled else None
    return TrainModule(head, text, loss, transport=transport, transport_weight=cfg.loss.transport_weight,
                       transport_labels=cfg.loss.transport_labels, visual=visual)


def build_recovery(cfg: Config):
    """The label-recovery method of ``method.name`` (None for "none")."""
    return None if cfg.method.name == "none" else make_recovery(cfg.method.name, **cfg.method.options)


def lr_lambda(cfg: Config, total_steps: int):
    """The learning-rate factor per step: linear warm-up, then constant or cosine."""
    warm = cfg.train.warmup_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.train.scheduler == "cosine":
            progress = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor
