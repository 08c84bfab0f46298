"""Turning per-label matching scores into probabilities, and choosing thresholds.

A tagging probability is ``p = sigmoid(a * s + b)`` of a label's own score ``s``
(:meth:`sigrl.scorer.Scorer.per_label`: never a function of the other labels). The map
``(a, b)``:

* **default, per backbone** (:func:`default_map`): plain CLIP matching takes the
  backbone's own logit scale as ``a`` (CLIP: 100, clamped to [1, 100]) and its logit
  bias as ``b`` where it has one (SigLIP), else ``b = -0.05 a`` (a label 0.05 above the
  neutral anchors, :data:`sigrl.tagging.NEUTRAL_ANCHORS`, maps to 0.5); a trained head's logit already carries its learnt LogitBias: ``a = 1, b = 0``.
  These are starting points, not calibrated probabilities.
* **calibrated** (``sigrl calibrate``, :func:`fit`): Platt scaling on a labelled set,
  one global map over every (image, label) pair with a known answer, and one map per
  label with at least :data:`MIN_PER_LABEL` positives and negatives, shrunk toward the
  global map. A label not seen in calibration uses the global map.

Thresholds per label: best F1 on the calibration set, or the lowest threshold reaching a
target precision; a label without positives there uses the global threshold (the best
micro-F1 single threshold). The calibration file (JSON, :meth:`Calibration.save`) holds
maps, thresholds, the scorer it was fitted for and the ECE before and after.
``--thresholds FILE`` reads ``label,threshold`` CSV rows (as RAM ships them).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, UsageError
from .safeio import atomic_write_text

FORMAT = "sigrl-calibration"
VERSION = 1
MIN_PER_LABEL = 5
SHRINK = 1.0  # L2 pull of a per-label map toward the global one (in units of log-loss sums)
ECE_BINS = 15


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def default_map(backbone, head: bool) -> tuple[float, float]:
    """The uncalibrated (a, b) of a scorer (module docstring)."""
    if head:
        return 1.0, 0.0
    model = getattr(backbone, "model", None)
    a = 100.0
    scale = getattr(model, "logit_scale", None)
    if scale is not None:
        try:
            a = float(min(100.0, max(1.0, math.exp(float(scale)))))
        except (TypeError, ValueError, RuntimeError):
            pass
    bias = getattr(model, "logit_bias", None)
    if bias is not None:
        try:
            return a, float(bias)
        except (TypeError, ValueError, RuntimeError):
            pass
    return a, -0.05 * a


# ----------------------------------------------------------------------- fitting
def fit_platt(s, y, prior: tuple[float, float] | None = None, shrink: float = 0.0, iters: int = 50,
              weights=None) -> tuple[float, float]:
    """Logistic regression ``p = sigmoid(a s + b)`` by Newton steps (1-D inputs ``s``,
    ``y`` in {0, 1}); ``shrink`` > 0 adds ``shrink/2 |(a, b) - prior|^2``. Targets are
    Platt's smoothed ones, so separable data stays finite."""
    s = np.asarray(s, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64).ravel()
    npos, nneg = float((w * y).sum()), float((w * (1 - y)).sum())
    t = np.where(y > 0.5, (npos + 1) / (npos + 2), 1 / (nneg + 2))
    prior = np.zeros(2) if prior is None else np.asarray(prior, np.float64)
    # start from a map that puts the mean score at the base rate, with a unit-variance slope
    sd = s.std() or 1.0
    theta = prior.copy() if shrink > 0 else np.array([1 / sd, math.log((npos + 1) / (nneg + 1)) - s.mean() / sd])
    X = np.stack([s, np.ones_like(s)], 1)
    for _ in range(iters):
        p = sigmoid(X @ theta)
        grad = X.T @ (w * (p - t)) + shrink * (theta - prior)
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + (shrink + 1e-9) * np.eye(2)
        step = np.linalg.solve(hess, grad)
        # damped: halve until the loss does not grow
        loss = _nll(X, theta, t, w) + shrink / 2 * np.sum((theta - prior) ** 2)
        for _ in range(30):
            new = theta - step
            if _nll(X, new, t, w) + shrink / 2 * np.sum((new - prior) ** 2) <= loss + 1e-12:
                break
            step /= 2
        theta = new
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def _nll(X, theta, t, w) -> float:
    z = X @ theta
    return float(np.sum(w * (np.logaddexp(0, z) - t * z)))


def ece(probs, targets, bins: int = ECE_BINS) -> float:
    """Expected calibration error over all (image, label) pairs with a known answer
    (``targets`` 1 / 0; entries < 0 are ignored): equal-width bins, weighted |mean p -
    fraction positive|."""
    p = np.asarray(probs, np.float64).ravel()
    y = np.asarray(targets, np.float64).ravel()
    keep = y >= 0
    p, y = p[keep], y[keep]
    if not len(p):
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(p))


def reliability(probs, targets, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, fraction positive, count) per non-empty bin."""
    p = np.asarray(probs, np.float64).ravel()
    y = np.asarray(targets, np.float64).ravel()
    keep = y >= 0
    p, y = p[keep], y[keep]
    idx = np.minimum((p * bins).astype(int), bins - 1)
    rows = [(p[idx == b].mean(), y[idx == b].mean(), (idx == b).sum()) for b in range(bins) if (idx == b).any()]
    if not rows:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    a = np.array(rows)
    return a[:, 0], a[:, 1], a[:, 2]


def f1_at(probs, y, threshold: float) -> float:
    pred = probs >= threshold
    tp = float((pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def best_f1_threshold(probs, y) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``probs >= threshold`` (y in {0,1}); ties: the
    midpoint between the best cut's score and the next lower score."""
    p = np.asarray(probs, np.float64).ravel()
    y = np.asarray(y).ravel()
    npos = int((y == 1).sum())
    if npos == 0:
        return 1.0, 0.0
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], (y[order] == 1)
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # cut only after the last of equal scores
    f1 = np.where(last, 2 * tp / (tp + fp + npos), -1)
    k = int(np.argmax(f1))
    below = ps[k + 1] if k + 1 < len(ps) else 0.0
    return float((ps[k] + below) / 2), float(f1[k])


def precision_threshold(probs, y, target: float) -> tuple[float, float]:
    """(lowest threshold whose precision >= ``target``, its precision); (1.0, 0.0) when
    none reaches it."""
    p = np.asarray(probs, np.float64).ravel()
    y = np.asarray(y).ravel()
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], (y[order] == 1)
    tp = np.cumsum(ys)
    prec = tp / np.arange(1, len(ps) + 1)
    last = np.r_[ps[1:] != ps[:-1], True]
    ok = np.flatnonzero(last & (prec >= target) & ys)
    if not len(ok):
        return 1.0, 0.0
    k = int(ok[-1])
    return float(ps[k]), float(prec[k])


# -------------------------------------------------------------------- the file
@dataclass
class Calibration:
    """Score maps and thresholds of one scorer (module docstring)."""

    a: float
    b: float
    labels: dict[str, dict] = field(default_factory=dict)  # name -> {"a", "b", "threshold", ...}
    threshold: float | None = None  # global threshold (labels without their own)
    scorer: dict = field(default_factory=dict)  # what it was fitted for
    info: dict = field(default_factory=dict)  # rule, ECE before/after, counts

    def map_for(self, label: str) -> tuple[float, float]:
        entry = self.labels.get(label)
        if entry and "a" in entry:
            return float(entry["a"]), float(entry["b"])
        return self.a, self.b

    def maps(self, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ab = np.array([self.map_for(l) for l in labels], np.float64).reshape(-1, 2)
        return ab[:, 0], ab[:, 1]

    def thresholds(self) -> dict[str, float]:
        return {l: float(e["threshold"]) for l, e in self.labels.items() if e.get("threshold") is not None}

    def probabilities(self, scores, labels: list[str]) -> np.ndarray:
        a, b = self.maps(labels)
        return sigmoid(np.asarray(scores, np.float64) * a + b)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "score": "independent",
                "global": {"a": self.a, "b": self.b, "threshold": self.threshold},
                "labels": self.labels, "scorer": self.scorer, "info": self.info}

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibration") -> "Calibration":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UsageError(f"{source}: not a sigrl calibration file (write one with 'sigrl calibrate')")
        if d.get("version") != VERSION:
            raise UsageError(f"{source}: calibration format version {d.get('version')}, this sigrl reads {VERSION}")
        try:
            g = d["global"]
            labels = {str(k): dict(v) for k, v in d.get("labels", {}).items()}
            cal = cls(float(g["a"]), float(g["b"]), labels,
                      None if g.get("threshold") is None else float(g["threshold"]),
                      dict(d.get("scorer", {})), dict(d.get("info", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{source}: malformed calibration file ({err})") from None
        values = [cal.a, cal.b] + [float(v) for e in labels.values() for k, v in e.items()
                                   if k in ("a", "b", "threshold") and v is not None]
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"{source}: calibration file holds non-finite numbers")
        return cal

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(f"{path}: cannot read calibration file ({err.strerror or err})") from None
        except ValueError as err:
            raise UsageError(f"{path}: not JSON ({err})") from None
        return cls.from_dict(d, str(path))


def read_thresholds(path: str | Path) -> dict[str, float]:
    """``label,threshold`` CSV (a header row is skipped when its second field is not a
    number; blank lines ignored) -> {label: threshold}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read thresholds file ({err})") from None
    out: dict[str, float] = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not any(x.strip() for x in row):
            continue
        if len(row) != 2:
            raise UsageError(f"{path}:{n}: expected 'label,threshold', got {len(row)} field(s)")
        label, value = row[0].strip(), row[1].strip()
        try:
            t = float(value)
        except ValueError:
            if n == 1:
                continue  # header
            raise UsageError(f"{path}:{n}: threshold {value!r} is not a number") from None
        if not 0 <= t <= 1:
            raise UsageError(f"{path}:{n}: threshold {t} is not between 0 and 1")
        out[label] = t
    return out


def write_thresholds(path: str | Path, thresholds: dict[str, float]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "threshold"])
    for label, t in thresholds.items():
        w.writerow([label, f"{t:.6f}"])
    return atomic_write_text(path, buf.getvalue())


def fit(scores, targets, labels: list[str], *, default: tuple[float, float], rule: str = "f1",
        precision: float | None = None, min_per_label: int = MIN_PER_LABEL, per_label_maps: bool = True,
        scorer: dict | None = None) -> Calibration:
    """Fit a :class:`Calibration` from per-label scores (N, C) and targets (N, C) in
    {1, -1, 0} (0 unknown, left out).

    Args:
        default: the uncalibrated map, for "ECE before".
        rule: "f1" (best F1 per label) or "precision" (lowest threshold reaching
            ``precision``).
    """
    s = np.asarray(scores, np.float64)
    t = np.asarray(targets)
    if s.shape != t.shape or s.ndim != 2 or s.shape[1] != len(labels):
        raise DataError(f"scores {s.shape} and targets {t.shape} do not match {len(labels)} labels")
    known = t != 0
    y = (t == 1).astype(np.float64)
    if not known.any() or not (y[known] == 1).any() or not (y[known] == 0).any():
        raise DataError("calibration needs both positive and negative answers")
    if rule not in ("f1", "precision"):
        raise UsageError(f"rule must be 'f1' or 'precision', got {rule!r}")
    if rule == "precision" and not (precision is not None and 0 < precision <= 1):
        raise UsageError(f"a target precision must be in (0, 1], got {precision!r}")
    a, b = fit_platt(s[known], y[known])
    cal = Calibration(a, b, {}, None, dict(scorer or {}), {})
    for j, name in enumerate(labels):
        k = known[:, j]
        npos, nneg = int(y[k, j].sum()), int(k.sum() - y[k, j].sum())
        entry = {"positives": npos, "negatives": nneg}
        if per_label_maps and npos >= min_per_label and nneg >= min_per_label:
            entry["a"], entry["b"] = fit_platt(s[k, j], y[k, j], prior=(a, b), shrink=SHRINK)
        cal.labels[name] = entry
    probs = cal.probabilities(s, labels)
    yy = np.where(known, y, -1)
    # global threshold: the best micro-F1 over every known pair
    if rule == "f1":
        cal.threshold, micro = best_f1_threshold(probs[known], y[known])
    else:
        cal.threshold, micro = precision_threshold(probs[known], y[known], precision)
    for j, name in enumerate(labels):
        k = known[:, j]
        entry = cal.labels[name]
        if entry["positives"] == 0:
            continue  # falls back to the global threshold
        if rule == "f1":
            entry["threshold"], entry["f1"] = best_f1_threshold(probs[k, j], y[k, j])
        else:
            thr, prec = precision_threshold(probs[k, j], y[k, j], precision)
            if prec > 0:
                entry["threshold"], entry["precision"] = thr, prec
    before = sigmoid(s * default[0] + default[1])
    cal.info = {"rule": rule if rule == "f1" else f"precision>={precision}", "default_map": list(default),
                "images": int(s.shape[0]), "labels": len(labels),
                "ece_before": ece(before, yy), "ece_after": ece(probs, yy)}
    return cal


def threshold_f1(probs, targets, labels: list[str], cal: Calibration, *, global_only: bool = False) -> dict:
    """Macro- and micro-F1 of thresholded ``probs`` (N, C) against ``targets`` in
    {1, -1, 0}: per-label thresholds (global for labels without one), or the global
    threshold alone."""
    p = np.asarray(probs, np.float64)
    t = np.asarray(targets)
    own = cal.thresholds()
    thr = np.array([cal.threshold if global_only or l not in own else own[l] for l in labels], np.float64)
    pred = p >= thr[None, :]
    known, pos = t != 0, t == 1
    tp = (pred & pos & known).sum(0).astype(float)
    fp = (pred & ~pos & known).sum(0).astype(float)
    fn = (~pred & pos & known).sum(0).astype(float)
    has = pos.any(0)
    per = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return {"macro_f1": float(per[has].mean()) if has.any() else float("nan"), "micro_f1": float(micro)}


def reliability_diagram(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Path:
    """PNG with one reliability curve per ``name: (probs, targets)`` (ECE in the legend)
    and the count histogram below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, (p, y) in curves.items():
        mp, fp, n = reliability(p, y)
        ax.plot(mp, fp, marker="o", ms=3, label=f"{name} (ECE {ece(p, y):.3f})")
        hx.bar(mp, n, width=1 / ECE_BINS * 0.8, alpha=0.5, label=name)
    ax.set_ylabel("fraction positive")
    ax.set_title(title or "reliability", fontsize=9)
    ax.legend(fontsize=7)
    hx.set_yscale("log")
    hx.set_xlabel("predicted probability")
    hx.set_ylabel("pairs")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
