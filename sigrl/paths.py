"""Where sigrl keeps things on disk.

The cache directory (embedded world, tiny VLP, label-embedding cache) is
``$SIGRL_CACHE`` when set, else the platform's user cache directory
(``~/.cache/sigrl`` on Linux).
"""
from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The sigrl cache directory (created on first use)."""
    path = Path(os.environ.get("SIGRL_CACHE") or user_cache_dir("sigrl"))
    path.mkdir(parents=True, exist_ok=True)
    return path
