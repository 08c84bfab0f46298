"""Scoring a part of a dataset with a trained head, and the metrics of a run.

Zero-shot datasets (some labels unseen in training) are evaluated the NUS-WIDE way
(DESIGN.md section 4): **ZSL** scores every image against the unseen labels only,
**GZSL** against all labels (seen + unseen); each reports overall precision, recall and
F1 of the top 3 and top 5 labels per image, and mAP. The two are separate passes of the
head, not one matrix sliced: the head's scores are normalised over the label set it is
given and its label graph is built from that set. Other datasets report mAP over all
labels. mAP counts a class without a positive as AP 0 unless ``eval.empty_class=skip``
(the rule is written next to every table).

Metric keys: ``<part>/zsl/<m>``, ``<part>/gzsl/<m>`` or ``<part>/mAP`` with ``<m>`` in
P@3, R@3, F1@3, P@5, R@5, F1@5, mAP (fractions in [0, 1]).

Across processes every process scores a contiguous chunk of the part and the chunks are
gathered (``accelerator.gather``), so every process ends with the same metrics.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

ZS_COLUMNS = ["P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP"]

__all__ = ["score_part", "part_metrics", "metric_keys", "evaluate_parts", "evaluate_run", "format_metrics"]


def _dist(accelerator) -> tuple[int, int]:
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


@torch.no_grad()
def score_part(model, part, backbone, label_sets: list[list[str]], accelerator=None,
               batch_size: int = 128) -> list[torch.Tensor]:
    """Scores of ``model`` (a :class:`~sigrl.train.TrainModule`) on every row of ``part``
    for each label set -> list of (len(part), C_s) float32 CPU tensors, on every process."""
    from .train import features, part_dataset

    rank, world = _dist(accelerator)
    device = accelerator.device if accelerator is not None else backbone.device
    n = len(part)
    per = math.ceil(n / world) if n else 0
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    dataset = torch.utils.data.Subset(part_dataset(part, backbone), range(lo, hi))
    # own generator: iterating must not consume the global RNG (training randomness)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         generator=torch.Generator())
    outs: list[list[torch.Tensor]] = [[] for _ in label_sets]
    was_training = model.training
    model.eval()
    autocast = accelerator.autocast() if accelerator is not None else _null()
    try:
        with autocast:
            for batch in loader:
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                g, l = features(batch, backbone)
                for j, labels in enumerate(label_sets):
                    outs[j].append(model(g, l, labels).float())
    finally:
        model.train(was_training)
    results = []
    for j, labels in enumerate(label_sets):
        local = torch.cat(outs[j]) if outs[j] else torch.zeros(0, len(labels), device=device)
        if world > 1:
            pad = torch.zeros(per - local.shape[0], len(labels), device=local.device, dtype=local.dtype)
            local = accelerator.gather(torch.cat([local, pad]))[:n]
        results.append(local.cpu())
    return results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def part_metrics(model, part, backbone, accelerator=None, *, empty_class: str = "zero",
                 batch_size: int = 128) -> dict[str, float]:
    """Metrics of one part (module docstring), keys prefixed with ``part.name``."""
    from .report import prf_map

    targets = np.asarray(part.targets)
    if part.unseen:
        cols = [part.labels.index(u) for u in part.unseen]
        zsl, gzsl = score_part(model, part, backbone, [list(part.unseen), list(part.labels)], accelerator,
                               batch_size)
        out = {f"{part.name}/zsl/{k}": v for k, v in prf_map(zsl.numpy(), targets[:, cols],
                                                            empty_class=empty_class).items()}
        out.update({f"{part.name}/gzsl/{k}": v for k, v in prf_map(gzsl.numpy(), targets,
                                                                   empty_class=empty_class).items()})
        return out
    from .metrics import mean_average_precision

    (scores,) = score_part(model, part, backbone, [list(part.labels)], accelerator, batch_size)
    return {f"{part.name}/mAP": mean_average_precision(scores.numpy(), targets, empty_class=empty_class)}


def metric_keys(part) -> list[str]:
    """The metric keys :func:`part_metrics` returns for ``part`` (higher is better)."""
    if not part.unseen:
        return [f"{part.name}/mAP"]
    out = []
    for setting, c in (("zsl", len(part.unseen)), ("gzsl", len(part.labels))):
        out += [f"{part.name}/{setting}/{m}" for m in ZS_COLUMNS if m == "mAP" or int(m[-1]) <= c]
    return out


def evaluate_parts(model, exp, accelerator=None, parts=None) -> dict[str, float]:
    """Metrics of the experiment's val and test parts (or ``parts``)."""
    parts = parts if parts is not None else [p for p in (exp.val, exp.test) if p is not None]
    out: dict[str, float] = {}
    for part in parts:
        out.update(part_metrics(model, part, exp.backbone, accelerator, empty_class=exp.cfg.eval.empty_class,
                                batch_size=exp.cfg.eval.batch_size))
    return out


def evaluate_run(run_dir: str | Path, *, split: str = "test", device=None, empty_class: str | None = None,
                 progress: bool = True, write: bool = True) -> dict:
    """Re-evaluate a trained run on its dataset (from the feature cache).

    Returns ``{"run", "split", "epoch", "empty_class", "zero_shot", "labels": {...},
    "metrics": {...}}`` and writes it to ``run/eval.json`` (``write``).
    """
    from .checkpoint import load_run
    from .config import config_from_dict
    from .safeio import atomic_write_text
    from .train import LabelText, TrainModule, prepare_experiment

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
    text = LabelText(exp.backbone, run.prompts)
    if run.context is not None:
        text.context = torch.nn.Parameter(run.context.to(device), requires_grad=False)
    model = TrainModule(run.head, text).to(device)
    metrics = part_metrics(model, part, exp.backbone, None, empty_class=cfg.eval.empty_class,
                           batch_size=cfg.eval.batch_size)
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
