"""One registry per kind of component: heads, losses, label-recovery methods, prompt learners.

Each registry maps a config name to ``"module:attribute"``, so reading the names (config
validation, ``--help``) imports nothing heavy; :meth:`Registry.get` imports the class
on first use (timm's registry, without the decorator: a decorator would have to import
every module, and torch with it, before ``sigrl train --help`` could list the names).

The config (``head.class``, ``loss.name``, ``method.name``, ``prompts.learner``), ``--help``, checkpoint
loading (``run.json`` stores a head's class name) and the benchmarks all read these
tables; nothing else lists the names.
"""
from __future__ import annotations

import importlib

from .errors import ConfigError

__all__ = ["Registry", "HEADS", "LOSSES", "RECOVERIES", "PROMPT_LEARNERS"]


class Registry:
    """Names of one kind of component -> their classes, imported lazily.

    Args:
        kind: what the entries are, for messages ("head", "loss", ...).
        entries: name -> "module:attribute".
    """

    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return self.resolve_name(name) is not None

    def resolve_name(self, name) -> str | None:
        """The registered name for ``name`` (a name, any case, or the class's own name)."""
        key = str(name).lower()
        if key in self._entries:
            return key
        for n, target in self._entries.items():  # a class name, as run.json stores it
            if target.rpartition(":")[2] == str(name):
                return n
        return None

    def class_name(self, name: str) -> str:
        return self._entries[self.resolve_name(name) or name].rpartition(":")[2]

    def get(self, name: str):
        """The class registered as ``name`` (or with that class name); ConfigError if unknown."""
        key = self.resolve_name(name)
        if key is None:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names)}")
        module, _, attr = self._entries[key].partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ModuleNotFoundError, AttributeError) as err:
            raise ConfigError(f"{self.kind} {key!r} is not available in this installation ({err})") from err


HEADS = Registry("head", {
    "sigrl": "sigrl.modules.head:SigRLHead",
    "adapter": "sigrl.modules.adapter:AdapterHead",
})

LOSSES = Registry("loss", {
    "full": "sigrl.losses.spml:FullLabelLoss",
    "an": "sigrl.losses.spml:AssumeNegativeLoss",
    "wan": "sigrl.losses.spml:WeightedAssumeNegativeLoss",
    "epr": "sigrl.losses.spml:ExpectedPositiveRegularizationLoss",
    "role": "sigrl.losses.spml:OnlineLabelEstimationLoss",
    "em": "sigrl.losses.spml:EntropyMaximizationLoss",
    "em_apl": "sigrl.losses.spml:AsymmetricPseudoLabelLoss",
    "ll_r": "sigrl.losses.spml:LargeLossRejectionLoss",
    "vlpl": "sigrl.methods.vlpl:VLPLLoss",
    "sst": "sigrl.methods.sst:SSTLoss",  # the reference SST, per step (needs label-specific features)
    "clsl": "sigrl.methods.clsl:CLSLLoss",  # the reference CLSL, per step (needs label-specific features)
    "ranking": "sigrl.losses.ranking:RankingLoss",
    "asl": "sigrl.losses.asl:AsymmetricLoss",
})

RECOVERIES = Registry("label recovery", {
    # our between-epoch variants of SST and CLSL (the papers' methods are losses "sst", "clsl")
    "sst_counted": "sigrl.methods.sst:StructuredSemanticTransfer",
    "clsl_threshold": "sigrl.methods.clsl:CollaborativeLabelRecovery",
})

PROMPT_LEARNERS = Registry("prompt learner", {
    "fixed": "sigrl.modules.prompt_learner:FixedPrompts",
    "coop": "sigrl.modules.prompt_learner:CoOpPrompts",
    "csc": "sigrl.modules.prompt_learner:ClassSpecificPrompts",
    "dualcoop": "sigrl.modules.dualcoop:DualCoOpPrompts",
})
