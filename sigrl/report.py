"""Paper-style result tables and plots.

``prf_map`` computes one row of the NUS-WIDE zero-shot table (docs/design.md §4) from
a score matrix: the overall precision, recall and F1 at k = 3 and 5, and mAP (ZSL and
GZSL rows come from separate scoring passes, :mod:`sigrl.evaluate`). ``write_report`` writes a set of rows as
markdown, JSON and CSV, stating the protocol variant (empty-class rule, preprocessing)
in every table; ``plot_per_label_ap`` and ``plot_pr_curves`` draw the pictures.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .metrics import average_precision_per_class, mean_average_precision, precision_recall_f1_at_k
from .safeio import atomic_write_text

ZS_COLUMNS = ["P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def prf_map(scores, targets, *, empty_class: str = "zero", ks=(3, 5)) -> dict[str, float]:
    """scores, targets (N, C) -> {"P@k", "R@k", "F1@k" for k in ks, "mAP"} (fractions)."""
    out: dict[str, float] = {}
    for k in ks:
        if k <= scores.shape[1]:
            p, r, f = precision_recall_f1_at_k(scores, targets, k)
            out.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": f})
    out["mAP"] = mean_average_precision(scores, targets, empty_class=empty_class)
    return out


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str], *, percent: bool = True) -> str:
    head = "| method | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
    body = ""
    for name, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append("–" if v is None else (f"{100 * v:.1f}" if percent else f"{v:.4f}"))
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def write_report(out_dir: str | Path, title: str, tables: dict[str, dict[str, dict[str, float]]], protocol: dict,
                 columns: list[str] | None = None) -> dict[str, Path]:
    """Write ``tables`` ({table name: {row name: {column: value}}}) as ``results.md``,
    ``results.json`` and ``results.csv`` in ``out_dir``; values are fractions, shown as
    percentages in markdown. ``protocol`` (empty-class rule, preprocessing, split, …) is
    printed above every table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = "; ".join(f"{k}: {v}" for k, v in protocol.items())
    md = f"# {title}\n\nProtocol — {proto}\n\nValues in %.\n"
    for name, rows in tables.items():
        cols = columns or sorted({c for r in rows.values() for c in r}, key=lambda c: (ZS_COLUMNS + [c]).index(c))
        md += f"\n## {name}\n\n" + markdown_table(rows, cols)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "method", "metric", "value"])
    for name, rows in tables.items():
        for method, values in rows.items():
            for metric, v in values.items():
                w.writerow([name, method, metric, f"{v:.6f}"])
    paths = {"md": out_dir / "results.md", "json": out_dir / "results.json", "csv": out_dir / "results.csv"}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["json"], json.dumps({"title": title, "protocol": protocol, "tables": tables}, indent=2))
    atomic_write_text(paths["csv"], buf.getvalue())
    return paths


def plot_per_label_ap(ap: np.ndarray, labels: list[str], unseen: set[str], path: str | Path, title: str = "") -> Path:
    """Sorted bars of per-label AP, unseen labels coloured apart from seen ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = np.nan_to_num(np.asarray(ap, dtype=float))
    order = np.argsort(-ap)
    colours = ["tab:orange" if labels[i] in unseen else "tab:blue" for i in order]
    fig, ax = plt.subplots(figsize=(max(6, min(30, 0.15 * len(ap))), 4))
    ax.bar(range(len(ap)), ap[order], color=colours, width=1.0)
    if len(ap) <= 60:
        ax.set_xticks(range(len(ap)), [labels[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="tab:blue", label="seen"), Patch(color="tab:orange", label="unseen")])
    ax.set_title(title or "per-label AP (sorted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pr_curves(scores, targets, labels: list[str], path: str | Path, n: int = 3, title: str = "") -> Path:
    """Precision-recall curves of the ``n`` best and ``n`` worst labels by AP (known
    entries only; labels without a positive are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, targets = _np(scores), _np(targets)
    ap = average_precision_per_class(scores, targets, empty_class="skip")
    valid = np.flatnonzero(~np.isnan(ap))
    ranked = valid[np.argsort(-ap[valid])]
    picks = list(ranked[:n]) + [i for i in ranked[-n:] if i not in ranked[:n]]
    fig, ax = plt.subplots(figsize=(6, 5))
    for c in picks:
        known = targets[:, c] != 0
        s, t = scores[known, c], targets[known, c] == 1
        order = np.argsort(-s, kind="stable")
        tp = np.cumsum(t[order])
        precision = tp / np.arange(1, len(order) + 1)
        recall = tp / max(1, t.sum())
        ax.plot(recall, precision, label=f"{labels[c]} (AP {ap[c]:.2f})",
                linestyle="-" if c in ranked[:n] else "--")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(title or f"precision-recall: {n} best and {n} worst labels")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
