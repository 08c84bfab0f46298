"""Methods for incomplete labels that are more than a loss.

    vlpl   vision-language pseudo labels (Xing et al.): :func:`vlpl_pseudo_labels`, :class:`VLPLLoss`
    sst    structured semantic transfer (Chen et al., AAAI 2022): :class:`SSTLoss` (the reference,
           ``loss.name: sst``), :class:`StructuredSemanticTransfer` (ours, ``method.name: sst_counted``)
    clsl   collaborative learning (He et al. 2025): :class:`CLSLLoss` (the reference, ``loss.name: clsl``),
           :class:`CollaborativeLabelRecovery` (ours, relaxing threshold, ``method.name: clsl_threshold``)

The per-step losses take the head's extras (``wants_extras = True``: the trainer passes
``extras=`` with the label-specific features). Label recovery (``sst_counted``,
``clsl_threshold``) follows one protocol, :class:`LabelRecovery`. The
trainer calls it between epochs on the whole training set and trains on the returned
targets with a BCE that ignores 0 (``build_loss("full")``)::

    recovery = build_recovery("clsl_threshold", pos_start=0.95, pos_end=0.75)
    for epoch in range(num_epochs):
        scores, features = score_train_set(model)          # (N, C), (N, D) or (N, C, D)
        targets = recovery.update(epoch, scores, features, observed)
        train_one_epoch(model, targets, loss=build_loss("full"))
"""
from __future__ import annotations

import importlib
import inspect

from torch import Tensor

from sigrl.errors import ConfigError
from sigrl.registry import RECOVERIES as _RECOVERIES


class LabelRecovery:
    """Protocol of a label-recovery method.

    ``update(epoch, scores, features, observed) -> targets``:
        epoch     0-based index of the epoch about to be trained with the targets;
        scores    (N, C) the model's current scores on the training set (logits unless the
                  method says otherwise);
        features  (N, D) global or (N, C, D) label-specific features, or None where the
                  method does not use them;
        observed  (N, C) in {+1, -1, 0};
        targets   (N, C) float in [-1, 1]: observed entries unchanged, recovered entries
                  +1 / -1 (or their confidence, signed), the rest 0 (= ignored).
    After ``update``, ``self.stats`` holds counts of what was recovered (for logging).
    Observed labels are never changed.
    """

    name = "recovery"

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    def update(self, epoch: int, scores: Tensor | None, features: Tensor | None, observed: Tensor) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Recovery methods here are stateless between calls; kept for checkpoint symmetry."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


RECOVERIES: tuple[str, ...] = _RECOVERIES.names

_LAZY = {
    "vlpl_pseudo_labels": ("sigrl.methods.vlpl", "vlpl_pseudo_labels"),
    "VLPLLoss": ("sigrl.methods.vlpl", "VLPLLoss"),
    "StructuredSemanticTransfer": ("sigrl.methods.sst", "StructuredSemanticTransfer"),
    "SSTLoss": ("sigrl.methods.sst", "SSTLoss"),
    "CLSLLoss": ("sigrl.methods.clsl", "CLSLLoss"),
    "label_cooccurrence": ("sigrl.methods.sst", "label_cooccurrence"),
    "CollaborativeLabelRecovery": ("sigrl.methods.clsl", "CollaborativeLabelRecovery"),
    "linear_schedule": ("sigrl.methods.clsl", "linear_schedule"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sigrl.methods' has no attribute {name!r}")


def build_recovery(name: str, **options) -> LabelRecovery:
    """Build the label-recovery method ``name`` (one of ``RECOVERIES``) with ``options``.

    Raises ``ConfigError`` for an unknown name, an unknown option or a bad value.
    """
    key = str(name).lower()
    if key not in RECOVERIES:
        raise ConfigError(f"unknown label recovery {name!r}; choose one of: {', '.join(RECOVERIES)}")
    cls = _RECOVERIES.get(key)
    params = inspect.signature(cls.__init__).parameters
    valid = [n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"recovery {key!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return cls(**options)


__all__ = ["LabelRecovery", "RECOVERIES", "build_recovery", *_LAZY]
