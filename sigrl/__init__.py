"""sigrl: multi-label image recognition with missing labels on frozen CLIP-style models.

Public API (imported lazily so ``import sigrl`` stays fast):
    sigrl.Tagger                 zero-shot tagging of image files with any label names
    sigrl.load_backbone          open_clip / Hugging Face CLIP backbones, frozen
    sigrl.SigRLHead              the GMC + SVFR + matching head on backbone features
    sigrl.metrics                NUS-WIDE-protocol mAP and F1@k
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Tagger": ("sigrl.tagging", "Tagger"),
    "load_backbone": ("sigrl.backbones", "load_backbone"),
    "SigRLHead": ("sigrl.modules.head", "SigRLHead"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name == "metrics":
        import importlib

        return importlib.import_module("sigrl.metrics")
    raise AttributeError(f"module 'sigrl' has no attribute {name!r}")
