"""Multi-label metrics with unknown labels: per-class AP, mAP and overall F1@k.

Inputs everywhere: ``scores`` (N, C) float (numpy array or torch tensor; higher = more
likely present) and ``targets`` (N, C) with entries in {1, -1, 0}: +1 present,
-1 absent, 0 unknown (docs/design.md §4). A 0/1 matrix is *not* a valid target
matrix here: its 0 entries would mean "unknown", not "absent".

**Average precision of class c** (the NUS-WIDE zero-shot protocol, LESA/BiAM/MKT/SigRL)::

    K_c   = {i : targets[i, c] != 0}            images labelled ±1 for c (unknowns ignored)
    rank the images of K_c by scores[:, c], highest first
    AP_c  = (1 / |P_c|) * Σ_{i ∈ P_c} precision@rank(i),   P_c = {i : targets[i, c] = +1}
    precision@r = #positives among the first r known images / r

*Tie rule* (order independent, and identical to scikit-learn's
``average_precision_score``): images with equal scores form one group; every positive
of a group gets the precision measured at the *end* of its group (all tied images
counted as ranked before it). So tied scores never profit from the input order.

**Empty classes** (no +1 among known entries): ``empty_class="zero"`` counts AP 0 (the
reference behaviour, used by the paper tables); ``"skip"`` leaves them out of the mean.
:func:`average_precision_per_class` marks them NaN under ``"skip"``.

**F1@k, "overall"** (pooled over images)::

    top_k(i) = the k highest-scoring labels of image i      (ties: lower column index first)
    TP = Σ_i |{c ∈ top_k(i) : targets[i, c] = +1}|
    P  = TP / (N·k),   R = TP / #{(i, c) : targets[i, c] = +1},   F1 = 2PR / (P + R)

with R = 0 when there is no positive and F1 = 0 when P + R = 0. Unknown (0) entries in
the top k count as wrong predictions, as in the reference.

Equivalently, for a positive with score p: precision = #{positives with score >= p} /
#{known images with score >= p}; that is how it is computed: per class, sort the known
scores and the positive scores (``np.sort``) and count with ``np.searchsorted``. Columns
are copied in contiguous blocks of about 64 MB; F1@k works on row blocks with
``np.partition``. 1006 classes x 107,859 images: a few seconds (see
``benchmarks/bench_nuswide.py``).
"""
from __future__ import annotations

import numpy as np

from .errors import UsageError

__all__ = ["average_precision_per_class", "mean_average_precision", "precision_recall_f1_at_k"]

_BLOCK_BYTES = 64 * 2**20


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach()
        if getattr(x, "dtype", None) is not None and str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as err:  # noqa: BLE001 - report any conversion failure the same way
        raise UsageError(f"{name} must be an (N, C) array or tensor ({err})") from None
    if arr.ndim != 2:
        raise UsageError(f"{name} must be 2-D (N images, C labels), got shape {arr.shape}")
    return arr


def _check(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(scores, "scores")
    t = _as_numpy(targets, "targets")
    if s.shape != t.shape:
        raise UsageError(f"scores {s.shape} and targets {t.shape} must have the same (N, C) shape")
    if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise UsageError(f"scores must be real numbers, got dtype {s.dtype}")
    if s.dtype != np.float64:
        s = s.astype(np.float32, copy=False)
    if np.isnan(s).any():
        raise UsageError("scores contain NaN; metrics need a total order of the scores")
    if t.dtype != np.int8:
        if not np.issubdtype(t.dtype, np.number):
            raise UsageError(f"targets must be numbers in {{1, -1, 0}}, got dtype {t.dtype}")
        bad = (t != 1) & (t != -1) & (t != 0)
        if bad.any():
            i, c = np.argwhere(bad)[0]
            raise UsageError(
                f"targets must be in {{1, -1, 0}} (+1 present, -1 absent, 0 unknown); "
                f"found {t[i, c]!r} at row {i}, column {c}"
            )
        t = t.astype(np.int8)
    elif ((t > 1) | (t < -1)).any():
        i, c = np.argwhere((t > 1) | (t < -1))[0]
        raise UsageError(f"targets must be in {{1, -1, 0}}; found {t[i, c]} at row {i}, column {c}")
    return s, t


def _check_rule(empty_class: str) -> None:
    if empty_class not in ("zero", "skip"):
        raise UsageError(f"empty_class must be 'zero' or 'skip', got {empty_class!r}")


def average_precision_per_class(scores, targets, *, empty_class: str = "zero") -> np.ndarray:
    """AP of every class, shape (C,), float64 in [0, 1] (see module docstring).

    Args:
        scores: (N, C) real scores; NaN is refused.
        targets: (N, C) in {1, -1, 0}.
        empty_class: "zero" → AP 0 for a class without a known positive; "skip" → NaN.
    """
    _check_rule(empty_class)
    s, t = _check(scores, targets)
    n, c = s.shape
    ap = np.zeros(c, dtype=np.float64)
    block = max(1, min(c, _BLOCK_BYTES // (max(n, 1) * (s.itemsize + 1))))
    for c0 in range(0, c, block):
        # one contiguous (block, N) copy so each class is a contiguous row
        sb = np.ascontiguousarray(s[:, c0 : c0 + block].T)
        tb = np.ascontiguousarray(t[:, c0 : c0 + block].T)
        for j in range(sb.shape[0]):
            col, lab = sb[j], tb[j]
            pos = np.sort(col[lab == 1])
            if pos.size == 0:
                ap[c0 + j] = np.nan if empty_class == "skip" else 0.0
                continue
            known = np.sort(col[lab != 0])
            # for each positive p: #known with score >= p and #positives with score >= p
            # (">=" puts the whole tie group before p: the order-independent tie rule)
            known_ge = known.size - np.searchsorted(known, pos, side="left")
            pos_ge = pos.size - np.searchsorted(pos, pos, side="left")
            ap[c0 + j] = float(np.mean(pos_ge / known_ge))
    return ap


def mean_average_precision(scores, targets, *, empty_class: str = "zero") -> float:
    """Mean over classes of :func:`average_precision_per_class`, a float in [0, 1].

    ``empty_class="zero"`` (reference, default) averages over all C classes with empty
    ones at 0; ``"skip"`` averages over classes that have a known positive only.

    Raises:
        UsageError: bad shapes/values, or ``"skip"`` with no class having a positive.
    """
    ap = average_precision_per_class(scores, targets, empty_class=empty_class)
    if ap.size == 0:
        raise UsageError("mAP needs at least one class (C = 0)")
    if empty_class == "skip":
        if np.isnan(ap).all():
            raise UsageError("mAP with empty_class='skip': no class has a positive (+1) target")
        return float(np.nanmean(ap))
    return float(ap.mean())


def precision_recall_f1_at_k(scores, targets, k: int) -> tuple[float, float, float]:
    """Overall (pooled) precision, recall and F1 of the top-k labels per image.

    See the module docstring for the formulas and the tie rule.

    Raises:
        UsageError: ``k`` not in 1..C, or bad shapes/values.
    """
    s, t = _check(scores, targets)
    n, c = s.shape
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= c:
        raise UsageError(f"k must be an integer in 1..C = 1..{c}, got {k!r}")
    k = int(k)
    n_pos_total = int((t == 1).sum())
    if n == 0:
        return 0.0, 0.0, 0.0
    tp = 0
    block = max(1, _BLOCK_BYTES // (max(c, 1) * 8 * 3))
    for r0 in range(0, n, block):
        sb = s[r0 : r0 + block]
        tb = t[r0 : r0 + block]
        # k-th largest value per row, then: all strictly greater + the first tied ones
        kth = -np.partition(-sb, k - 1, axis=1)[:, k - 1 : k]
        greater = sb > kth
        tied = sb == kth
        need = k - greater.sum(axis=1, keepdims=True)
        take = greater | (tied & (np.cumsum(tied, axis=1) <= need))
        tp += int((take & (tb == 1)).sum())
    precision = tp / (n * k)
    recall = tp / n_pos_total if n_pos_total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)

