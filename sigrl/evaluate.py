"""The metrics of a part of a dataset, and of a trained run.

Zero-shot datasets (some labels unseen in training) are evaluated the NUS-WIDE way
(docs/design.md, "Protocols"): **ZSL** scores every image against the unseen labels
only, **GZSL** against all labels (seen + unseen); each reports overall precision,
recall and F1 of the top 3 and top 5 labels per image, and mAP. The two are separate
passes of the scorer, never one matrix sliced: a head's scores are normalised over the
label set it is given and its label graph is built from that set (the BiAM/MKT/SigRL
evaluation code scores ``label_emb[925:]`` on its own). Other datasets report mAP over
all labels. mAP counts a class without a positive as AP 0 unless
``eval.empty_class=skip`` (the rule is written next to every table).

Metric keys: ``<part>/zsl/<m>``, ``<part>/gzsl/<m>`` or ``<part>/mAP`` with ``<m>`` in
P@3, R@3, F1@3, P@5, R@5, F1@5, mAP (fractions in [0, 1]).

``sigrl eval``, ``sigrl bench``, the demo and the trainer all compute metrics here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_run
from .config import config_from_dict
from .errors import CheckpointError
from .experiment import prepare_experiment
from .metrics import mean_average_precision
from .report import ZS_COLUMNS, prf_map
from .safeio import atomic_write_text
from .scorer import Scorer, score_part

__all__ = ["zero_shot_scores", "part_metrics", "zero_shot_metrics", "metric_keys", "evaluate_parts", "evaluate_run", "format_metrics"]


def zero_shot_scores(scorer: Scorer, part, accelerator=None, batch_size: int = 128,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ZSL scores (N, U) of the unseen labels in their own pass, GZSL scores (N, C) of all labels)."""
    return tuple(score_part(scorer, part, [list(part.unseen), list(part.labels)], accelerator, batch_size,
                            progress))


def part_metrics(scorer: Scorer, part, accelerator=None, *, empty_class: str = "zero",
                 batch_size: int = 128, progress: bool = False) -> dict[str, float]:
    """Metrics of one part (module docstring), keys prefixed with ``part.name``."""
    if part.unseen:
        zsl, gzsl = zero_shot_scores(scorer, part, accelerator, batch_size, progress)
        return zero_shot_metrics(part, zsl, gzsl, empty_class=empty_class)
    (scores,) = score_part(scorer, part, [list(part.labels)], accelerator, batch_size, progress)
    return {f"{part.name}/mAP": mean_average_precision(scores.numpy(), np.asarray(part.targets),
                                                       empty_class=empty_class)}


def zero_shot_metrics(part, zsl, gzsl, *, empty_class: str = "zero") -> dict[str, float]:
    """ZSL metrics of ``zsl`` (N, U) against the unseen columns of the part's targets,
    GZSL metrics of ``gzsl`` (N, C) against all of them."""
    targets = np.asarray(part.targets)
    cols = [part.labels.index(u) for u in part.unseen]
    out = {f"{part.name}/zsl/{k}": v for k, v in prf_map(np.asarray(zsl), targets[:, cols],
                                                        empty_class=empty_class).items()}
    out.update({f"{part.name}/gzsl/{k}": v for k, v in prf_map(np.asarray(gzsl), targets,
                                                               empty_class=empty_class).items()})
    return out


def metric_keys(part) -> list[str]:
    """The metric keys :func:`part_metrics` returns for ``part`` (higher is better)."""
    if not part.unseen:
        return [f"{part.name}/mAP"]
    out = []
    for setting, c in (("zsl", len(part.unseen)), ("gzsl", len(part.labels))):
        out += [f"{part.name}/{setting}/{m}" for m in ZS_COLUMNS if m == "mAP" or int(m[-1]) <= c]
    return out


def evaluate_parts(scorer: Scorer, exp, accelerator=None, parts=None) -> dict[str, float]:
    """Metrics of the experiment's val and test parts (or ``parts``)."""
    parts = parts if parts is not None else [p for p in (exp.val, exp.test) if p is not None]
    out: dict[str, float] = {}
    for part in parts:
        out.update(part_metrics(scorer, part, accelerator, empty_class=exp.cfg.eval.empty_class,
                                batch_size=exp.cfg.eval.batch_size))
    return out


def evaluate_run(run_dir: str | Path, *, split: str = "test", device=None, empty_class: str | None = None,
                 progress: bool = True, write: bool = True) -> dict:
    """Re-evaluate a trained run on its dataset (from the feature cache).

    Returns ``{"run", "split", "epoch", "empty_class", "zero_shot", "labels": {...},
    "metrics": {...}}`` and writes it to ``run/eval.json`` (``write``).
    """
    run_dir = Path(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = load_run(run_dir, device=device)
    if not run.config:
        raise CheckpointError(f"{run_dir}: config.yaml missing; cannot find the run's dataset")
    cfg = config_from_dict(run.config, str(run_dir / "config.yaml"))
    if empty_class is not None:
        cfg.eval.empty_class = empty_class
    exp = prepare_experiment(cfg, None, need_train=(split == "val"), progress=progress, device=device)
    if exp.backbone.fingerprint != run.info.get("fingerprint", exp.backbone.fingerprint):
        raise CheckpointError(f"{run_dir}: the run was trained on backbone fingerprint {run.info['fingerprint']}, "
                              f"its config now resolves to {exp.backbone.fingerprint} "
                              f"({exp.backbone.spec.get('model')}); restore the run's backbone files")
    run.check_backbone(exp.backbone)
    part = {"test": exp.test, "val": exp.val}.get(split)
    if part is None:
        raise CheckpointError(f"{run_dir}: the run's dataset has no {split!r} split (use --split test)")
    scorer = Scorer.from_loaded(run, exp.backbone)
    metrics = part_metrics(scorer, part, None, empty_class=cfg.eval.empty_class, batch_size=cfg.eval.batch_size)
    result = {
        "run": str(run_dir), "split": split, "epoch": run.metrics.get("epoch"),
        "empty_class": cfg.eval.empty_class, "zero_shot": bool(part.unseen),
        "num_images": len(part), "labels": {"all": len(part.labels), "unseen": len(part.unseen)},
        "metrics": {k[len(split) + 1:]: v for k, v in metrics.items()},
    }
    if write:
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=1))
    return result


def format_metrics(metrics: dict[str, float], *, empty_class: str = "zero", title: str = "") -> str:
    """A markdown table of unprefixed metrics (``zsl/…``, ``gzsl/…`` or ``mAP``), in %."""
    rule = ("a class with no positive counts as AP 0 (reference rule)" if empty_class == "zero"
            else "classes with no positive are left out of the mean")
    lines = [title] if title else []
    rows = [(name, {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(name + "/")})
            for name in ("zsl", "gzsl")]
    rows = [(n, r) for n, r in rows if r]
    if rows:
        cols = [c for c in ZS_COLUMNS if any(c in r for _, r in rows)]
        lines.append("| setting | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, r in rows:
            lines.append(f"| {name.upper()} | " + " | ".join(
                f"{100 * r[c]:.1f}" if c in r else "–" for c in cols) + " |")
    if "mAP" in metrics:
        lines.append(f"mAP: {100 * metrics['mAP']:.1f}")
    lines.append(f"Values in %. mAP: {rule}. P/R/F1@k: top-k labels per image, pooled over images.")
    return "\n".join(lines)
