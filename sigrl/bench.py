"""Benchmarks: a scorer (plain CLIP matching or a trained run) over a protocol's test
split -> the paper-style table, as markdown + JSON + CSV, with plots.

    nuswide-zsl   NUS-WIDE zero-shot (925 seen / 81 unseen): ZSL and GZSL rows of
                  P/R/F1 at k = 3 and 5 and mAP (docs/design.md, "Protocols")
    spml          runs trained on single positive labels: mAP per run
    partial       runs trained on partial labels: mAP per proportion and the average

:func:`evaluate_zero_shot` is the shared core of the zero-shot rows (the demo and
``sigrl bench`` call it): test features come from the feature cache (built on first
use), scores from :mod:`sigrl.scorer`, metrics from :mod:`sigrl.evaluate` — ZSL in its
own pass over the unseen labels, as ``sigrl eval`` and the trainer compute it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .backbones import load_backbone
from .data.nuswide import load_nuswide
from .errors import UsageError
from .evaluate import zero_shot_metrics, zero_shot_scores
from .experiment import split_part
from .metrics import average_precision_per_class
from .prompts import load_prompts
from .report import plot_per_label_ap, plot_pr_curves, write_report
from .scorer import Scorer

EMPTY_RULES = {"zero": "classes without a positive count as AP 0 (reference)",
               "skip": "classes without a positive are left out"}


def evaluate_zero_shot(scorer: Scorer, dataset, cache_root: str | Path, *, empty_class: str = "zero",
                       plots_dir: str | Path | None = None, progress: bool = True, batch_size: int = 64) -> dict:
    """ZSL (the unseen labels, scored on their own) and GZSL (all labels) metrics of
    ``scorer`` on ``dataset.test``.

    Returns ``{"zsl": {"P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP"}, "gzsl": {...}}``
    (fractions). With ``plots_dir``: per-label AP bars and PR curves (GZSL) as PNG files.
    """
    part = split_part(dataset.test, scorer.backbone, cache_root, unseen=dataset.unseen, progress=progress)
    zsl, gzsl = zero_shot_scores(scorer, part, batch_size=batch_size, progress=progress)
    metrics = zero_shot_metrics(part, zsl, gzsl, empty_class=empty_class)
    result = {setting: {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith(f"test/{setting}/")}
              for setting in ("zsl", "gzsl")}
    if plots_dir is not None:
        scores, targets = gzsl.numpy(), np.asarray(part.targets)
        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        ap = average_precision_per_class(scores, targets, empty_class=empty_class)
        plot_per_label_ap(ap, part.labels, set(dataset.unseen), plots_dir / f"{scorer.name}-per-label-ap.png",
                          title=f"{scorer.name}: per-label AP (GZSL, sorted)")
        plot_pr_curves(scores, targets, part.labels, plots_dir / f"{scorer.name}-pr-curves.png",
                       title=f"{scorer.name}: best and worst labels")
    return result


def bench_nuswide_zsl(root: str | Path, scorers: list[Scorer], out_dir: str | Path, *, layout: str = "auto",
                      image_root=None, cache_root=None, empty_class: str = "zero", limit: int | None = None,
                      progress: bool = True) -> dict:
    """The NUS-WIDE zero-shot table for each scorer; files under ``out_dir``."""
    dataset = load_nuswide(root, layout=layout, image_root=image_root)
    if limit:
        dataset.test = dataset.test.subset(np.arange(min(limit, len(dataset.test))))
    out_dir = Path(out_dir)
    cache_root = Path(cache_root) if cache_root else out_dir / "cache"
    tables: dict = {"ZSL (81 unseen labels)": {}, "GZSL (1006 labels)": {}}
    for s in scorers:
        res = evaluate_zero_shot(s, dataset, cache_root, empty_class=empty_class, plots_dir=out_dir, progress=progress)
        tables["ZSL (81 unseen labels)"][s.name] = res["zsl"]
        tables["GZSL (1006 labels)"][s.name] = res["gzsl"]
    pre = scorers[0].backbone.preprocess_config.to_dict() if scorers else {}
    protocol = {"dataset": f"NUS-WIDE zero-shot, {len(dataset.test)} test images"
                + (f" (first {limit} only)" if limit else ""),
                "seen/unseen": f"{len(dataset.seen)}/{len(dataset.unseen)}", "empty classes": EMPTY_RULES[empty_class],
                "F1": "overall (pooled over images)", "preprocessing": pre}
    write_report(out_dir, "NUS-WIDE zero-shot", tables, protocol)
    return tables


def _read_json_dict(path: Path) -> dict:
    """A JSON object from ``path``, or UsageError naming the file and the defect."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UsageError(f"{path}: not a readable JSON file ({type(err).__name__}); "
                         "re-run 'sigrl eval' on the run to rewrite it") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _run_metrics(run_dir: Path) -> tuple[dict, dict]:
    """(metrics, config) of a run directory, from eval.json (else run.json)."""
    for name in ("eval.json", "run.json"):
        p = run_dir / name
        if p.is_file():
            data = _read_json_dict(p)
            metrics, config = data.get("metrics", data), data.get("config", {})
            if not config and name == "eval.json" and (run_dir / "run.json").is_file():
                config = _read_json_dict(run_dir / "run.json").get("config", {})
            if not isinstance(metrics, dict) or not isinstance(config, dict):
                raise UsageError(f"{p}: 'metrics' and 'config' must be JSON objects")
            return metrics, config
    raise UsageError(f"{run_dir}: not a run directory (no eval.json or run.json); train it with 'sigrl train'")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _map_of(metrics: dict, depth: int = 0) -> float | None:
    for key in ("map", "mAP", "test/mAP", "test_mAP", "test/map"):
        if _is_number(metrics.get(key)):
            return float(metrics[key])
    if depth < 3:
        for value in metrics.values():
            if isinstance(value, dict):
                found = _map_of(value, depth + 1)
                if found is not None:
                    return found
    return None


def _run_row(protocol: str, run: Path) -> tuple[str, str, float]:
    """(row name, column, test mAP) of one run; UsageError when it is unusable."""
    metrics, config = _run_metrics(run)
    m = _map_of(metrics)
    if m is None:
        raise UsageError(f"{run}: its metrics hold no mAP; evaluate it with 'sigrl eval {run}'")
    if protocol != "partial":
        return run.name, "mAP", m
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    prop = data.get("proportion")
    if not _is_number(prop) or not 0 < prop <= 1:
        raise UsageError(f"{run}: not a partial-label run (config data.proportion must be a number in (0, 1], got {prop!r})")
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    loss = config.get("loss") if isinstance(config.get("loss"), dict) else {}
    name = method.get("name") if method.get("name") not in (None, "none") else loss.get("name")
    return str(name or run.name), f"{round(100 * float(prop))}%", m


def bench_runs(protocol: str, runs: list[str | Path], out_dir: str | Path) -> tuple[dict, list[str]]:
    """``spml``: one row per run (test mAP). ``partial``: rows by method, a column per
    known-label proportion and the average over proportions.

    Returns ``(tables, problems)``: unusable runs are left out and described in
    ``problems``; UsageError when no run is usable."""
    rows: dict = {}
    problems: list[str] = []
    for run in runs:
        try:
            name, column, m = _run_row(protocol, Path(run))
        except UsageError as err:
            problems.append(str(err))
            continue
        rows.setdefault(name, {})[column] = m
    if not rows:
        raise UsageError(problems[0] if len(problems) == 1 else f"no usable run among {len(problems)}: {problems[0]}")
    cols = None
    if protocol == "partial":
        for values in rows.values():
            values["average"] = float(np.mean(list(values.values())))
        props = sorted({c for r in rows.values() for c in r if c != "average"}, key=lambda c: float(c[:-1]))
        cols = props + ["average"]
    tables = {"test mAP": rows}
    write_report(out_dir, f"{protocol} benchmark", tables, {"metric": "mean over classes of AP on the test split"},
                 columns=cols)
    return tables, problems


def load_scorers(checkpoints: list[str], model: str | None, pretrained: str | None, prompts: str | None,
                 preprocess: dict | None = None, device: str = "cpu") -> list[Scorer]:
    """The trained runs ``checkpoints``, plus plain CLIP matching when ``model`` is given."""
    scorers = [Scorer.from_run(c, device=device) for c in checkpoints]
    if model or not scorers:
        if not model:
            raise UsageError("give --checkpoint RUN (repeatable) and/or --model [--pretrained] for plain CLIP matching")
        bb = load_backbone(model, pretrained, device=device, preprocess=preprocess)
        scorers.insert(0, Scorer.clip(bb, load_prompts(prompts or "scene")))
    return scorers
