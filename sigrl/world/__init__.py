"""The embedded world (DESIGN.md section 6): a seeded synthetic multi-label dataset
(:mod:`.generator`) and the tiny CLIP-style model pre-trained on its captions
(:mod:`.pretrain`, imported lazily because it needs torch and open_clip).

    from sigrl.world import WorldSpec, ensure_world, PretrainSpec, ensure_tiny_vlp
    root = ensure_world(WorldSpec(seed=0))                  # cached dataset root
    config, weights = ensure_tiny_vlp(root, PretrainSpec())  # cached open_clip model
    backbone = sigrl.load_backbone(str(config), str(weights))
"""
from __future__ import annotations

from .generator import World, WorldSpec, ensure_world, generate_world, is_finished, read_world_json

_LAZY = {"PretrainSpec", "ensure_tiny_vlp", "load_tiny_vlp"}

__all__ = ["World", "WorldSpec", "ensure_world", "generate_world", "is_finished", "read_world_json", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        from . import pretrain as _pretrain

        return getattr(_pretrain, name)
    raise AttributeError(f"module 'sigrl.world' has no attribute {name!r}")
