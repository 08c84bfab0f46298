"""Frozen vision-language backbones behind one interface (see :mod:`.base`).

``load_backbone(model, pretrained)`` picks the adapter:
    - a directory with ``config.json``           -> Hugging Face CLIP (local files only)
    - a ``.json`` file or an open_clip model name -> open_clip (``pretrained``: tag or file)
"""
from __future__ import annotations

from pathlib import Path

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, PreprocessConfig, cut_to_longest


def load_backbone(model: str, pretrained: str | None = None, *, device: str = "cpu",
                  preprocess: dict | None = None) -> Backbone:
    """A frozen backbone. ``preprocess`` overrides preprocessing fields, e.g.
    ``{"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "resize_size": 256}`` for the
    reference SigRL/MKT protocol."""
    if model in ("world", "world-v2") and not pretrained:  # the world model shipped in the package
        from ..world.ship import shipped_paths

        model, pretrained = (str(p) for p in shipped_paths())
    path = Path(model)
    if path.is_dir():
        from .hf_clip import load_hf_clip

        return load_hf_clip(path, device=device, preprocess=preprocess)
    from .openclip import load_open_clip

    return load_open_clip(model, pretrained, device=device, preprocess=preprocess)


def backbone_from_spec(spec: dict, device: str = "cpu", preprocess: dict | None = None) -> Backbone:
    """Rebuild the backbone a run or cache manifest names (its ``spec`` dict)."""
    return load_backbone(spec["model"], spec.get("pretrained"), device=device, preprocess=preprocess)


__all__ = ["Backbone", "PreprocessConfig", "load_backbone", "backbone_from_spec", "cut_to_longest",
           "IMAGENET_MEAN", "IMAGENET_STD"]
