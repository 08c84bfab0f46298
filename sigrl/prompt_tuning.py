"""Prompt-tuning runs on the embedded world, shared by the demo and benchmarks/bench_prompts.py.

    PROMPT_RUNS                          name -> (config in configs/, extra --set overrides)
    rows = prompt_rows(common, runs_dir) train each run, then score it as `sigrl eval RUN` does:
    rows["zsl"]["coop"]  == {"map", "f1@3", "f1@5", "run"}   (and rows["gzsl"][...])

The learners themselves live in :mod:`sigrl.modules.prompt_learner` (fixed, coop, csc) and
:mod:`sigrl.modules.dualcoop`. World numbers are a functional and comparative testbed, not
a claim about real data.
"""
from __future__ import annotations

import time
from pathlib import Path

from .paths import CONFIGS_DIR

__all__ = ["PROMPT_RUNS", "prompt_rows", "train_prompt_run"]

#: name -> (config file, extra overrides): the prompts alone (CoOp / DualCoOp setting) and
#: jointly with the SigRL head
PROMPT_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "coop": ("world_coop.yaml", ()),
    "dualcoop": ("world_dualcoop.yaml", ()),
    # the SigRL head costs ~0.3 s a step on 2 CPU cores: half the training images, 3 epochs
    "coop+sigrl": ("world_coop.yaml", ("head.class=sigrl", "train.lr=1e-3", "data.max_train_images=3000",
                                       "train.epochs=3")),
    "dualcoop+sigrl": ("world_dualcoop.yaml", ("head.class=sigrl", "train.lr=1e-3", "data.max_train_images=3000",
                                               "train.epochs=3")),
}


def train_prompt_run(name: str, overrides: list[str], run_dir: str | Path, progress: bool = False):
    """Train the prompt run ``name`` of :data:`PROMPT_RUNS` into ``run_dir``; returns
    (TrainResult, seconds)."""
    from .config import load_config
    from .train import train

    config, extra = PROMPT_RUNS[name]
    cfg = load_config(CONFIGS_DIR / config, [*extra, *overrides, f"output={run_dir}"])
    t0 = time.time()
    res = train(cfg, progress=progress)
    return res, time.time() - t0


def prompt_rows(common: list[str], runs_dir: str | Path, *, names=("coop", "dualcoop"), progress: bool = False,
                budget: list[str] | tuple[str, ...] = ()) -> dict:
    """Train the prompt runs ``names`` (with the demo's ``common`` overrides + ``budget``)
    into ``runs_dir/<name>_zsl`` and score each saved run as ``sigrl eval RUN`` does.

    Returns ``{"zsl": {name: entry}, "gzsl": {name: entry}, "seconds": {name: s}}`` with
    ``entry = {"map", "f1@3", "f1@5", "p@3", "r@3", "run"}`` (fractions, test split)."""
    from .evaluate import evaluate_run

    out: dict = {"zsl": {}, "gzsl": {}, "seconds": {}}
    for name in names:
        run_dir = Path(runs_dir) / f"{name.replace('+', '_')}_zsl"
        _, seconds = train_prompt_run(name, [*common, *budget], run_dir, progress)
        metrics = evaluate_run(run_dir, progress=progress, write=False)["metrics"]
        for setting in ("zsl", "gzsl"):
            out[setting][name] = {"map": metrics[f"{setting}/mAP"], "f1@3": metrics.get(f"{setting}/F1@3"),
                                  "f1@5": metrics.get(f"{setting}/F1@5"), "p@3": metrics.get(f"{setting}/P@3"),
                                  "r@3": metrics.get(f"{setting}/R@3"), "run": str(run_dir)}
        out["seconds"][name] = round(seconds, 1)
    return out
