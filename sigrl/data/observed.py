"""Observed labels: hide part of a full target matrix, reproducibly (docs/design.md §4).

All functions take ``targets`` (N, C) in {1, -1, 0} and return a new int8 matrix of the
same shape in which hidden entries are 0 (unknown). Randomness comes from
``numpy.random.default_rng(seed)`` only, so the same seed gives the same matrix on every
machine and numpy version that keeps the PCG64 stream.

* :func:`single_positive` (Cole et al. 2021): for each image with at least one positive,
  keep exactly one positive, drawn uniformly among its positives; every other entry
  (the other positives and all negatives) becomes 0. Images without a positive
  become all 0. Draw: ``u_i ~ U[0, 1)`` per image, keep its ⌊u_i · P_i⌋-th positive
  (P_i positives, column order).
* :func:`partial` (SST protocol): keep a proportion ``p`` of each image's known
  entries — positives and negatives alike — the rest 0. ``mode="per_image"``
  (default) keeps exactly round(p · K_i) of the K_i known entries of image i, a
  uniformly random subset; ``mode="bernoulli"`` keeps each known entry independently
  with probability p. ``mode="sst"``: the SST protocol exactly (HCP-MLR-PL
  ``datasets/*.py`` ``changeLabelProportion``): ``numpy.random.seed(seed)`` (legacy
  MT19937, the reference's seed 0), one ``random(shape)`` draw for the whole matrix, an
  entry kept iff its draw < p — a Bernoulli mask over every entry, the same matrix the
  reference gets from the same full labels. (VOC in the reference counts a class present
  only as difficult as absent, -1; sigrl's VOC loader makes it unknown, 0, by default:
  ``data.options: {difficult: negative}`` gives the reference's labels.)
* :func:`holdout_split`: a seeded random ``fraction`` of indices as validation (the
  20 % of train held out in the SPML protocol).

:func:`save_observed` writes ``<name>.npy`` plus ``<name>.json`` (kind, seed,
proportion, source, shape, sha256 of the .npy) atomically, so a run can name and
re-load exactly the labels it trained on; :func:`load_observed` checks the pair.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from ..safeio import atomic_write_bytes, atomic_write_text

__all__ = ["single_positive", "partial", "make_observed", "holdout_split", "save_observed", "load_observed"]

_ROW_BLOCK = 8192


def _targets(targets) -> np.ndarray:
    if hasattr(targets, "detach"):
        targets = targets.detach().cpu().numpy()
    t = np.asarray(targets)
    if t.ndim != 2:
        raise UsageError(f"targets must be (N, C), got shape {t.shape}")
    if t.size and not np.isin(t, (-1, 0, 1)).all():
        raise UsageError("targets must hold only 1 (present), -1 (absent) and 0 (unknown)")
    return t.astype(np.int8, copy=False)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def single_positive(targets, seed: int) -> np.ndarray:
    """Keep one uniformly drawn positive per image; everything else 0. Returns (N, C) int8."""
    t = _targets(targets)
    rng = np.random.default_rng(_seed(seed))
    n, _ = t.shape
    u = rng.random(n)
    out = np.zeros(t.shape, dtype=np.int8)
    for r0 in range(0, n, _ROW_BLOCK):
        pos = t[r0 : r0 + _ROW_BLOCK] == 1
        n_pos = pos.sum(axis=1)
        pick = np.minimum(np.floor(u[r0 : r0 + _ROW_BLOCK] * n_pos), np.maximum(n_pos - 1, 0)).astype(np.int64)
        rank = np.cumsum(pos, axis=1, dtype=np.int32)  # 1-based rank of each positive in its row
        out[r0 : r0 + _ROW_BLOCK][pos & (rank == (pick + 1)[:, None])] = 1
    return out


def partial(targets, proportion: float, seed: int, *, mode: str = "per_image") -> np.ndarray:
    """Keep a ``proportion`` in (0, 1] of each image's known entries (see module docstring)."""
    t = _targets(targets)
    try:
        p = float(proportion)
    except (TypeError, ValueError):
        raise UsageError(f"proportion must be a number in (0, 1], got {proportion!r}") from None
    if not 0.0 < p <= 1.0:
        raise UsageError(f"proportion must be in (0, 1] (e.g. 0.1 for 10%), got {proportion!r}")
    if mode not in ("per_image", "bernoulli", "sst"):
        raise UsageError(f"mode must be 'per_image', 'bernoulli' or 'sst', got {mode!r}")
    if mode == "sst":  # the reference's legacy global-seed draw, one matrix at once
        keys = np.random.RandomState(_seed(seed)).random_sample(t.shape)
        return np.where(keys < p, t, 0).astype(np.int8)
    rng = np.random.default_rng(_seed(seed))
    n, c = t.shape
    out = np.zeros(t.shape, dtype=np.int8)
    for r0 in range(0, n, _ROW_BLOCK):
        tb = t[r0 : r0 + _ROW_BLOCK]
        keys = rng.random(tb.shape)  # same stream whatever the block size
        known = tb != 0
        if mode == "bernoulli":
            keep = known & (keys < p)
        else:
            k = np.floor(p * known.sum(axis=1) + 0.5).astype(np.int64)  # round half up
            keys = np.where(known, keys, 2.0)  # unknown entries sort last, never kept
            order = np.argsort(keys, axis=1, kind="stable")
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(c)[None, :].repeat(len(tb), 0), axis=1)
            keep = rank < k[:, None]
        out[r0 : r0 + _ROW_BLOCK] = np.where(keep, tb, 0)
    return out


def make_observed(targets, kind: str, seed: int, proportion: float | None = None) -> np.ndarray:
    """Dispatch: ``kind`` = "full" (copy), "single_positive", "partial" or "partial_sst"
    (the SST protocol's mask, ``partial(mode="sst")``; both need a proportion)."""
    if kind == "full":
        return _targets(targets).copy()
    if kind == "single_positive":
        return single_positive(targets, seed)
    if kind in ("partial", "partial_sst"):
        if proportion is None:
            raise UsageError(f"kind {kind!r} needs a proportion in (0, 1]")
        return partial(targets, proportion, seed, mode="sst" if kind == "partial_sst" else "per_image")
    raise UsageError(f"kind must be 'full', 'single_positive', 'partial' or 'partial_sst', got {kind!r}")


def holdout_split(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: sorted int64 indices, ``round(fraction · n)`` of them for val."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise UsageError(f"n must be a non-negative integer, got {n!r}")
    if not 0.0 <= float(fraction) < 1.0:
        raise UsageError(f"fraction must be in [0, 1), got {fraction!r}")
    perm = np.random.default_rng(_seed(seed)).permutation(int(n))
    n_val = int(np.floor(fraction * n + 0.5))
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_observed(path: str | Path, observed, *, kind: str, seed: int, source: str,
                  proportion: float | None = None, extra: dict | None = None) -> Path:
    """Write ``observed`` to ``path`` (.npy) and its description to ``path`` with .json.

    Args:
        kind: "full", "single_positive", "partial" (or any name of the procedure).
        seed: the seed that produced it.
        source: what it was derived from (e.g. "voc2012/train").
        proportion: for partial labels.
        extra: more JSON-serialisable facts to record.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise UsageError(f"{path}: observed labels are saved as .npy (got suffix {path.suffix!r})")
    obs = _targets(observed)
    buf = io.BytesIO()
    np.save(buf, obs, allow_pickle=False)
    data = buf.getvalue()
    meta = {
        "kind": kind,
        "seed": _seed(seed),
        "proportion": proportion,
        "source": source,
        "shape": list(obs.shape),
        "positives": int((obs == 1).sum()),
        "negatives": int((obs == -1).sum()),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if extra:
        meta.update(extra)
    atomic_write_bytes(path, data)
    atomic_write_text(_meta_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_observed(path: str | Path, *, expected_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Read a pair written by :func:`save_observed`: ``(observed (N, C) int8, meta dict)``.

    Raises:
        DataError: a file is missing or unreadable, the .npy does not match the hash
            or shape recorded in the .json, holds values outside {1, -1, 0}, or does
            not have ``expected_shape``.
    """
    path = Path(path)
    meta_path = _meta_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected observed labels saved by sigrl)") from None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{meta_path}: file not found (the description of {path.name})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    if meta.get("sha256") and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise DataError(f"{path}: contents do not match the sha256 recorded in {meta_path.name}")
    try:
        obs = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    if obs.ndim != 2 or obs.dtype != np.int8 or not np.isin(obs, (-1, 0, 1)).all():
        raise DataError(f"{path}: expected an (N, C) int8 array with values in {{1, -1, 0}}")
    if "shape" in meta and list(obs.shape) != list(meta["shape"]):
        raise DataError(f"{path}: shape {obs.shape} differs from {tuple(meta['shape'])} in {meta_path.name}")
    if expected_shape is not None and tuple(obs.shape) != tuple(expected_shape):
        raise DataError(f"{path}: shape {obs.shape}, expected {tuple(expected_shape)} (labels of another split?)")
    return obs, meta
