"""``sigrl demo``: every job of the toolkit, end to end, on the embedded world.

1. the world (seeded synthetic images of coloured shapes, labels, captions) and the tiny
   CLIP-like model pre-trained on its captions — both cached after the first run;
2. zero-shot tags for a few test images, drawn as a PNG grid;
3. zero-shot recognition of the unseen labels (ZSL) and of all labels (GZSL): random
   scores, a colour oracle (perfect colour, no shape — DESIGN.md section 6), plain CLIP
   local+global matching, a plain adapter head and the SigRL head trained on the seen
   labels only (``configs/world_adapter_zsl.yaml``, ``configs/world_zsl.yaml``);
4. single-positive training (one known label per image) with several losses against
   full labels, and partial labels (a proportion of each image's labels known).

Everything is scored by :mod:`sigrl.scorer` and measured by :mod:`sigrl.evaluate`, as
``sigrl eval`` measures it (zero-shot rows: :func:`sigrl.bench.evaluate_zero_shot` of the
saved best head; SPML rows: the trainer's test metrics of the best epoch), and written
to ``DIR/results.json``; every trained row names its ``"run"``.
The world is a functional and comparative testbed: its numbers say which method helps
on this world, not how any method does on real photos.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .bench import evaluate_zero_shot
from .config import load_config
from .evaluate import zero_shot_metrics
from .experiment import build_backbone, open_dataset, split_part
from .images import load_image
from .paths import CONFIGS_DIR
from .prompts import load_prompts
from .safeio import atomic_write_text
from .scorer import Scorer
from .tagging import Tagger
from .train import train

CONFIGS = CONFIGS_DIR

# (name in results, config file, overrides); the SPML rows all share world_spml_an.yaml
SPML_RUNS = [
    ("full", ["data.observed=full", "loss.name=full"]),
    ("an", []),
    ("em", ["loss.name=em"]),
    ("em_apl", ["loss.name=em_apl"]),
    ("ll_r", ["loss.name=ll_r"]),
    ("vlpl", ["loss.name=vlpl"]),
]
PARTIAL_PROPORTIONS = (0.1, 0.5, 0.9)
QUICK_SKIP = {"em", "ll_r"}  # --quick: a functional check, fewer rows
# The demo must finish in about 10 minutes on 2 CPU cores, so it trains shorter than the
# configs do (their full runs: `sigrl train configs/...`, `benchmarks/bench_spml.py`).
# The SigRL head's reconstruction costs B*P*C*D^2 per step, so it gets a subset.
BUDGET = {
    "sigrl": ["data.max_train_images=2000", "train.epochs=3"],
    "adapter": ["train.epochs=5"],
    # the entropy-maximising losses (EM, EM+APL, VLPL) need about 10 epochs (4 epochs: EM 26 vs AN 32 mAP)
    "spml": ["head.class=adapter", "data.max_train_images=3000", "train.epochs=10"],
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _zs_entry(metrics: dict, run: str | None = None) -> dict:
    entry = {"map": metrics["mAP"], "f1@3": metrics.get("F1@3"), "f1@5": metrics.get("F1@5"),
             "p@3": metrics.get("P@3"), "r@3": metrics.get("R@3")}
    if run is not None:
        entry["run"] = run  # `sigrl eval RUN --json` prints the same numbers
    return entry


def colour_oracle_scores(targets: np.ndarray, labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """An attribute oracle: label "red star" scores 1 when the image holds anything red
    (read from the true labels), else 0, plus a little noise to break ties. It knows
    colour perfectly and shape not at all."""
    colours = [l.split()[0] for l in labels]
    present = targets == 1
    scores = np.zeros(targets.shape, dtype=np.float32)
    for c in set(colours):
        cols = [j for j, x in enumerate(colours) if x == c]
        has = present[:, cols].any(axis=1)
        scores[:, cols] = has[:, None]
    return scores + 1e-3 * rng.random(scores.shape, dtype=np.float32)


def tag_grid(backbone, dataset, path: Path, n: int = 8, top_k: int = 3) -> Path:
    """PNG grid of ``n`` test images with their top tags (all labels; ✓ = correct)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = dataset.test
    tagger = Tagger(test.labels, backbone=backbone, prompts="photo")
    idx = np.linspace(0, len(test) - 1, n).astype(int)
    results = tagger.tag([test.path(i) for i in idx], top_k=top_k)
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(2.4 * ((n + 1) // 2), 6))
    for ax, i, r in zip(axes.flat, idx, results):
        ax.imshow(load_image(test.path(i)))
        ax.axis("off")
        truth = {test.labels[j] for j in np.flatnonzero(test.targets[i] == 1)}
        lines = [("✓ " if l in truth else "✗ ") + f"{l} {s:.2f}" for l, s in r.tags]
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
        ax.text(0, 1.0, "truth: " + ", ".join(sorted(truth)), transform=ax.transAxes, fontsize=6, va="top",
                color="white", backgroundcolor=(0, 0, 0, 0.55), wrap=True)
    fig.suptitle("zero-shot tags over all labels (CLIP local+global matching, tiny world model); ✓ correct, ✗ wrong",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _train(config: str, overrides: list[str], progress: bool):
    cfg = load_config(CONFIGS / config, overrides)
    return train(cfg, progress=progress)


def _test_map(result) -> float:
    return float(result.best_metrics["test/mAP"])


def _independent_rows(part, rng: np.random.Generator) -> dict:
    """Random scores and the colour oracle: each label's score ignores the other labels,
    so scoring the unseen labels on their own gives their columns of the full matrix."""
    targets = np.asarray(part.targets)
    cols = [part.labels.index(u) for u in part.unseen]
    rows = {}
    for name, scores in (("random", rng.random(targets.shape, dtype=np.float32)),
                         ("colour_oracle", colour_oracle_scores(targets, part.labels, rng))):
        metrics = zero_shot_metrics(part, scores[:, cols], scores)
        rows[name] = {s: {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith(f"test/{s}/")}
                      for s in ("zsl", "gzsl")}
    return rows


def run_demo(seed: int = 0, output: str | Path = "sigrl-demo", quick: bool = False, progress: bool = True) -> dict:
    """Run the demo; returns (and writes) the results dict."""
    t0 = time.time()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "runs").exists():  # the demo owns DIR/runs: every demo trains from scratch
        shutil.rmtree(out / "runs")
    common = [f"data.world.seed={seed}", f"train.seed={seed}", f"data.seed={seed}", f"cache.dir={out / 'cache'}"]
    if quick:
        common += ["data.world.quick=true", "backbone.pretrain.quick=true", "train.epochs=2"]
    results: dict = {"seed": seed, "quick": quick,
                     "note": "embedded synthetic world: a functional and comparative testbed, not a claim about real data"}

    _say("[1/4] world and tiny vision-language model (cached after the first run)")
    cfg = load_config(CONFIGS / "world_zsl.yaml", common + [f"output={out / 'runs' / 'sigrl_zsl'}"])
    dataset, root = open_dataset(cfg)
    backbone = build_backbone(cfg, root)
    results["world"] = {"root": str(root), "seen_labels": len(dataset.seen), "unseen_labels": len(dataset.unseen),
                        "train_images": len(dataset.train), "test_images": len(dataset.test)}

    _say("[2/4] zero-shot tags for a few test images")
    results["tag_grid"] = str(tag_grid(backbone, dataset, out / "tags.png"))

    _say("[3/4] zero-shot: unseen labels (ZSL, scored on their own) and all labels (GZSL)")
    cache_root = out / "cache"
    part = split_part(dataset.test, backbone, cache_root, unseen=dataset.unseen, progress=progress)
    rows = _independent_rows(part, np.random.default_rng(seed))
    eval_batch = cfg.eval.batch_size
    clip = Scorer.clip(backbone, load_prompts(cfg.prompts.name))
    rows["clip"] = evaluate_zero_shot(clip, dataset, cache_root, plots_dir=out / "plots", progress=progress,
                                      batch_size=eval_batch)
    runs = {}
    for name, config in (("adapter", "world_adapter_zsl.yaml"), ("sigrl", "world_zsl.yaml")):
        run_dir = out / "runs" / f"{name}_zsl"
        _train(config, common + ([] if quick else BUDGET[name]) + [f"output={run_dir}"], progress)
        # the saved best head, scored as `sigrl eval RUN` scores it
        rows[name] = evaluate_zero_shot(Scorer.from_run(run_dir, backbone=backbone, name=name), dataset, cache_root,
                                        plots_dir=out / "plots", progress=progress, batch_size=eval_batch)
        runs[name] = str(run_dir)
    results["zsl"] = {k: _zs_entry(v["zsl"], runs.get(k)) for k, v in rows.items()}
    results["gzsl"] = {k: _zs_entry(v["gzsl"], runs.get(k)) for k, v in rows.items()}

    _say("[4/4] single positive and partial labels (all labels, one head per loss)")
    spml = {}
    for name, extra in SPML_RUNS:
        if quick and name in QUICK_SKIP:
            continue
        if quick and name == "em_apl":
            extra = extra + ["loss.options.warmup_epochs=1"]  # the quick demo trains 2 epochs
        budget = [] if quick else BUDGET["spml"]
        run_dir = out / "runs" / f"spml_{name}"
        res = _train("world_spml_an.yaml", common + budget + extra + [f"output={run_dir}"], progress)
        spml[name] = {"map": _test_map(res), "run": str(run_dir)}
    results["spml"] = spml
    partial = {}
    for p in ((0.5,) if quick else PARTIAL_PROPORTIONS):
        for method in ("none", "sst"):
            key = f"{'bce' if method == 'none' else method}@{round(100 * p)}%"
            budget = [] if quick else BUDGET["spml"]
            run_dir = out / "runs" / ("partial_" + key.replace("@", "_").rstrip("%"))
            # sst: the reference's per-step loss, its pair branch narrowed to 64 (1128 label pairs on CPU)
            loss = ["loss.name=full"] if method == "none" else [
                "loss.name=sst", "loss.options.hidden_dim=64", "loss.options.out_dim=64"]
            res = _train("world_spml_an.yaml", common + budget + ["data.observed=partial", f"data.proportion={p}",
                                                                *loss, f"output={run_dir}"], progress)
            partial[key] = {"map": _test_map(res), "run": str(run_dir)}
    results["partial"] = partial
    results["seconds"] = time.time() - t0
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    print(format_results(results))
    print(f"\nwritten: {out / 'results.json'}, {out / 'tags.png'}, plots in {out / 'plots'}, runs in {out / 'runs'}")
    return results


def _pct(x) -> str:
    return "   –" if x is None else f"{100 * x:5.1f}"


def format_results(r: dict) -> str:
    w = r.get("world", {})
    lines = [f"sigrl demo — embedded world, seed {r['seed']}{' (quick)' if r.get('quick') else ''}: "
             f"{w.get('seen_labels')} seen + {w.get('unseen_labels')} unseen labels, {w.get('test_images')} test images",
             "(a functional and comparative testbed, not a claim about real data; values in %)", "",
             f"{'zero-shot':<15} {'ZSL mAP':>8} {'F1@3':>6} {'F1@5':>6}   {'GZSL mAP':>8} {'F1@3':>6} {'F1@5':>6}"]
    for name in r.get("zsl", {}):
        z, g = r["zsl"][name], r["gzsl"][name]
        lines.append(f"{name:<15} {_pct(z['map']):>8} {_pct(z['f1@3']):>6} {_pct(z['f1@5']):>6}   "
                     f"{_pct(g['map']):>8} {_pct(g['f1@3']):>6} {_pct(g['f1@5']):>6}")
    if r.get("spml"):
        lines += ["", "single positive (test mAP, all labels): " +
                  ", ".join(f"{k} {_pct(v['map']).strip()}" for k, v in r["spml"].items())]
    if r.get("partial"):
        lines += ["partial labels (test mAP): " + ", ".join(f"{k} {_pct(v['map']).strip()}" for k, v in r["partial"].items())]
    lines.append(f"\ntotal {r.get('seconds', 0):.0f} s")
    return "\n".join(lines)
