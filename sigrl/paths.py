"""Where sigrl keeps things on disk.

The cache directory (embedded world, tiny VLP, label-embedding cache) is
``$SIGRL_CACHE`` when set, else the platform's user cache directory
(``~/.cache/sigrl`` on Linux).

Prompt sets and run configs ship inside the package (``sigrl/assets/``), so an
installed wheel finds them; the repository's top-level ``prompts/`` and ``configs/``
are symlinks to these folders (one copy, edited in place).
"""
from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
PROMPTS_DIR = ASSETS_DIR / "prompts"
CONFIGS_DIR = ASSETS_DIR / "configs"


def cache_dir() -> Path:
    """The sigrl cache directory (created on first use)."""
    path = Path(os.environ.get("SIGRL_CACHE") or user_cache_dir("sigrl"))
    path.mkdir(parents=True, exist_ok=True)
    return path
