"""The demo's table over several world seeds: mean and spread of every row, and the goals.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_seeds.py                 # seeds 0,1,2, default rows
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_seeds.py --full          # every row
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_seeds.py --seeds 1,2 --json out.json

Each seed runs ``sigrl.demo.run_demo(seed)`` (its own world and seen/unseen split, the
shipped world model, the demo's budgets: hyper-parameters were chosen on the validation
split of seed 0 only) into ``--out/seed-N``; the table gives the mean and the sample
standard deviation over the seeds (values in %), then checks the goals of issue 13:

* the shipped model's unseen-label mAP (CLIP local+global matching) >= 2x the colour oracle;
* local matching alone above global alone on the unseen labels;
* SigRL head >= CLIP matching + 5 ZSL mAP points and above the adapter head; GZSL likewise;
* single positive: AN -> full gap >= 5 points and the best method closes >= 50 % of it.

The world is a functional and comparative testbed, not a claim about real data.

Measured 2026-12-05 (shipped model v5, sha256 716e7368..., default rows, 2 CPU cores, 1
thread, empty cache per seed, beside another benchmark; 253 s in all), mean ± sd over seeds
0, 1, 2 (%), ZSL / GZSL mAP: random 9.1 / 9.1, colour oracle 21.2 / 20.8, shape oracle 17.6 /
17.1, bag oracle 35.9 / 36.7, CLIP matching 35.0 ± 5.1 / 38.0 ± 1.3 (global 33.1, local
42.9 ± 4.4 / 45.9), adapter 46.2 ± 1.3 / 64.7 ± 1.1, SigRL 42.0 ± 5.5 / 51.1 ± 0.9; on seeds
1, 2 alone: CLIP 35.4 / 37.6, local 43.3 / 45.2, adapter 46.6 / 65.2, SigRL 42.2 / 51.0 (the
heads as --tune chose them with v5: sigrl.demo.HEAD_TUNED; at the lrs chosen with v3, adapter
41.7 / 53.3, SigRL 42.0 / 49.6). Single positive (the config's centered rule, lrs tuned with
v5 at 20 epochs): full 67.1 ± 6.1 (seed 1: 60.5), AN 44.6 ± 2.2, EM 62.7 ± 3.5 (80 % of the
gap), EM+APL 62.7 ± 3.6.
Goals met: shape probe 0.9 (0.915: 0.911, 0.928, 0.907), local > global, SigRL >= CLIP + 5
(ZSL, GZSL), AN -> full gap >= 5 (22.5), 50 % of it (EM 80 %); missed: 2x colour oracle
(1.65x; local alone 2.02x), SigRL > adapter on ZSL (42.2 vs 46.6) and GZSL (51.0 vs 65.2).
--tune (about 10 minutes at one thread) printed, val ZSL / GZSL mAP (%): adapter lr 3e-4
43.9 / 49.7, 1e-3 43.7 / 49.7, 3e-3 40.2 / 54.9, 1e-2 43.9 / 61.0, 3e-2 38.2 / 58.7; at 1e-2
top-k 4 45.2 / 63.7, 8 47.1 / 62.2, 32 42.2 / 53.6; top-k 8 with dropout 0.3 45.3 / 62.4.
SigRL lr 3e-4 43.1 / 49.0, 1e-3 43.1 / 49.1, 3e-3 43.4 / 49.7, 1e-2 43.8 / 49.9, 3e-2 43.9 /
49.9, 1e-1 43.8 / 48.9; at 3e-2 top-k 4 43.5 / 50.2, 8 43.8 / 50.2, 32 43.5 / 50.3; graph
complete 43.9 / 49.9, cooc 44.0 / 49.9 (the three graphs tie; complete has the higher
GZSL by 0.01). CLIP matching by top-k (4, 8, 16, 32): 34.6, 34.6, 34.5, 35.1 ZSL.
With v4 (2026-12-05, softmax rule for single positive): CLIP 22.1 / 23.1, adapter 36.1 /
43.0, SigRL 35.4 / 40.0, full 64.1, AN 48.3, EPR 55.8 (48 %), shape probe 0.933.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(values: list[float]) -> str:
    m, s = _stats(values)
    return f"{100 * m:5.1f} ± {100 * s:4.1f}"


def table(all_results: list[dict]) -> tuple[str, dict]:
    """Markdown table + the per-row means (fractions)."""
    means: dict = {}
    lines = ["| row | ZSL mAP | GZSL mAP | ZSL F1@3 |", "|---|---|---|---|"]
    for name in all_results[0]["zsl"]:
        z = [r["zsl"][name]["map"] for r in all_results]
        g = [r["gzsl"][name]["map"] for r in all_results]
        f = [r["zsl"][name]["f1@3"] for r in all_results]
        means[f"zsl/{name}"], means[f"gzsl/{name}"] = _stats(z)[0], _stats(g)[0]
        lines.append(f"| {name} | {_fmt(z)} | {_fmt(g)} | {_fmt(f)} |")
    lines += ["", "| single positive / partial | test mAP |", "|---|---|"]
    for section in ("spml", "partial"):
        for name in all_results[0].get(section, {}):
            v = [r[section][name]["map"] for r in all_results]
            means[f"{section}/{name}"] = _stats(v)[0]
            lines.append(f"| {section}: {name} | {_fmt(v)} |")
    lines += ["", "| probe (linear, frozen global features) | test mAP |", "|---|---|"]
    for name in all_results[0].get("probe", {}):
        v = [r["probe"][name] for r in all_results]
        means[f"probe/{name}"] = _stats(v)[0]
        lines.append(f"| {name} | {_fmt(v)} |")
    return "\n".join(lines), means


TUNING_SEED = 0  # hyper-parameters were chosen on this seed's validation split
# --tune: each zero-shot head's hyper-parameters at the demo's budget, on TUNING_SEED's
# validation split, chosen by the configs' early-stopping metric (val/zsl/mAP: the unseen
# labels of the val split); choices within TIE of the best ZSL count as tied and the higher
# val/gzsl/mAP among them wins. A coordinate search, as benchmarks/bench_spml.py --tune does:
# the lr first (3e-4 ... 3e-2, then one step further along LR_LADDER while the pick is at an
# end of those tried), then each of the head's own options (OWN) in turn at what is chosen.
LR_LADDER = ("3e-5", "1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1", "3e-1")
FIRST_LRS = ("3e-4", "3e-2")  # the first range tried, ends included
TIE = 0.001
#: per head: (option, its default, the values tried)
OWN = {
    "adapter": [("head.options.top_k", "16", ("4", "8", "16", "32")), ("head.options.dropout", "0", ("0", "0.3"))],
    "sigrl": [("head.options.top_k", "16", ("4", "8", "16", "32")),
              ("head.options.graph", "knn", ("knn", "complete", "cooc"))],
}
# Not searched: head.options.score_with=graph (scoring with the graph-refined T_g instead of
# T) is not SigRL's scoring (docs/fidelity.md); tried once at the choice above it gave val ZSL
# 45.4 (+1.5) and GZSL 43.8 (-6.0), 2026-12-05.


def pick(trials: dict) -> tuple:
    """The choice with the best val ZSL mAP, ties (within TIE) broken by val GZSL mAP."""
    top = max(v["val/zsl/mAP"] for v in trials.values())
    tied = [c for c, v in trials.items() if v["val/zsl/mAP"] >= top - TIE]
    return max(tied, key=lambda c: trials[c]["val/gzsl/mAP"])


def clip_top_k(out: Path) -> dict:
    """CLIP matching (no training) on TUNING_SEED's validation split at each top-k the heads'
    search tries: {k: {"val/zsl/mAP": x, "val/gzsl/mAP": y}}. Not a choice (CLIP matching
    keeps the reference's 16): it shows how much of a head's top-k gain plain matching gets."""
    import dataclasses

    from sigrl.bench import evaluate_zero_shot
    from sigrl.config import load_config
    from sigrl.demo import CONFIGS, seed_overrides
    from sigrl.experiment import build_backbone, open_dataset
    from sigrl.prompts import load_prompts
    from sigrl.scorer import Scorer

    common = seed_overrides(TUNING_SEED, out / "cache")
    cfg = load_config(CONFIGS / "world_zsl.yaml", common + [f"output={out / 'runs' / 'clip'}"])
    dataset, root = open_dataset(cfg)
    backbone = build_backbone(cfg, root)
    on_val = dataclasses.replace(dataset, test=dataset.val)
    ks = sorted({int(v) for options in OWN.values() for key, _, values in options if key.endswith("top_k")
                 for v in values})
    rows = {}
    for k in ks:
        r = evaluate_zero_shot(Scorer.clip(backbone, load_prompts(cfg.prompts.name), top_k=k), on_val, out / "cache",
                               progress=False, batch_size=cfg.eval.batch_size)
        rows[k] = {"val/zsl/mAP": r["zsl"]["mAP"], "val/gzsl/mAP": r["gzsl"]["mAP"]}
        print(f"clip     top_k={k:<3} val ZSL {100 * r['zsl']['mAP']:6.2f}  GZSL {100 * r['gzsl']['mAP']:6.2f}",
              file=sys.stderr, flush=True)
    return rows


def tune_heads(out: Path) -> dict:
    """Train each demo head (``sigrl.demo.ZSL_HEADS``) on world seed TUNING_SEED with the
    demo's budget at the choices the search visits; returns {head: {"trials": {choice:
    {"val/zsl/mAP": x, "val/gzsl/mAP": y}}, "chosen": [overrides]}} with the best epoch's
    validation figures (the test figures are not read). A choice is its overrides joined by
    spaces ("train.lr=1e-2 head.options.top_k=8")."""
    import torch

    from sigrl.config import load_config
    from sigrl.demo import BUDGET, CONFIGS, ZSL_HEADS, seed_overrides
    from sigrl.train import train

    common = seed_overrides(TUNING_SEED, out / "cache")
    result: dict = {}
    for name, config in ZSL_HEADS:
        trials: dict = {}

        def trial(choice: tuple) -> None:
            if choice in trials:
                return
            t = time.time()
            torch.manual_seed(TUNING_SEED)
            run = out / "runs" / f"{name}_{len(trials)}"
            cfg = load_config(CONFIGS / config, common + BUDGET[name] + list(choice) + [f"output={run}"])
            best = train(cfg, progress=False).best_metrics
            trials[choice] = {k: float(best[k]) for k in ("val/zsl/mAP", "val/gzsl/mAP")}
            print(f"{name:<8} {' '.join(choice):<45} val ZSL {100 * best['val/zsl/mAP']:6.2f}  GZSL "
                  f"{100 * best['val/gzsl/mAP']:6.2f}  ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)

        lo, hi = LR_LADDER.index(FIRST_LRS[0]), LR_LADDER.index(FIRST_LRS[1])
        for lr in LR_LADDER[lo:hi + 1]:
            trial((f"train.lr={lr}",))
        while True:
            at = LR_LADDER.index(pick(trials)[0].split("=", 1)[1])
            if at == lo and lo > 0:
                lo -= 1
                trial((f"train.lr={LR_LADDER[lo]}",))
            elif at == hi and hi < len(LR_LADDER) - 1:
                hi += 1
                trial((f"train.lr={LR_LADDER[hi]}",))
            else:
                break
        chosen = pick(trials)
        for key, default, values in OWN.get(name, []):
            options = [chosen if v == default else chosen + (f"{key}={v}",) for v in values]
            for c in options:
                trial(c)
            chosen = pick({c: trials[c] for c in options})
        result[name] = {"trials": {" ".join(c): v for c, v in trials.items()}, "chosen": list(chosen)}
    return result


def goals(m: dict, untuned: dict | None = None, untuned_name: str = "") -> list[tuple[str, bool, str]]:
    """The issue's goals on the means ``m``; the head comparisons (SigRL vs CLIP matching and
    vs the adapter) are judged on ``untuned`` (the means over the seeds not used for tuning)
    when given, as the issue asks."""
    out = []
    heads = untuned if untuned else m
    where = f" on {untuned_name}" if untuned else ""

    def add(name, ok, detail):
        out.append((name, bool(ok), detail))

    if "zsl/clip" in m and "zsl/colour_oracle" in m:
        r = m["zsl/clip"] / max(m["zsl/colour_oracle"], 1e-9)
        add("unseen mAP >= 2x colour oracle", r >= 2, f"{100 * m['zsl/clip']:.1f} vs {100 * m['zsl/colour_oracle']:.1f} ({r:.2f}x)")
    if "probe/shape" in m:
        add("shape probe >= 0.9", m["probe/shape"] >= 0.9, f"{m['probe/shape']:.3f}")
    if "zsl/clip_local" in m:
        add("local alone > global alone (ZSL)", m["zsl/clip_local"] > m["zsl/clip_global"],
            f"{100 * m['zsl/clip_local']:.1f} vs {100 * m['zsl/clip_global']:.1f}")
    for s in ("zsl", "gzsl"):
        if f"{s}/sigrl" in heads:
            add(f"SigRL >= CLIP + 5 ({s.upper()}{where})", heads[f"{s}/sigrl"] >= heads[f"{s}/clip"] + 0.05,
                f"{100 * heads[f'{s}/sigrl']:.1f} vs {100 * heads[f'{s}/clip']:.1f}")
            add(f"SigRL > adapter ({s.upper()}{where})", heads[f"{s}/sigrl"] > heads[f"{s}/adapter"],
                f"{100 * heads[f'{s}/sigrl']:.1f} vs {100 * heads[f'{s}/adapter']:.1f}")
    if "spml/full" in m and "spml/an" in m:
        gap = m["spml/full"] - m["spml/an"]
        add("AN -> full gap >= 5", gap >= 0.05, f"{100 * gap:.1f} points")
        others = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("spml/") and k not in ("spml/full", "spml/an")}
        if others:
            best = max(others, key=others.get)
            closed = (others[best] - m["spml/an"]) / gap if gap > 0 else float("nan")
            add("best method closes >= 50% of the gap", closed >= 0.5, f"{best}: {100 * closed:.0f}%")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--full", action="store_true", help="every demo row")
    ap.add_argument("--out", default="bench-world-seeds")
    ap.add_argument("--json", help="write the per-seed results, means and goals here")
    ap.add_argument("--reuse", action="store_true",
                    help="read OUT/seed-N/results.json where it exists instead of running that seed again")
    ap.add_argument("--tune", action="store_true",
                    help=f"choose each zero-shot head's lr and own options (OWN) at the demo's budget on seed "
                         f"{TUNING_SEED}'s validation split (val/zsl/mAP, ties broken by val/gzsl/mAP) and print "
                         "the trials; runs no seeds")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.tune:
        clip = clip_top_k(Path(args.out))
        tuned = tune_heads(Path(args.out))
        print(f"\nworld seed {TUNING_SEED}, validation split, the demo's budget: val ZSL / GZSL mAP (%)")
        for name, r in tuned.items():
            print(f"{name}:")
            for choice, v in r["trials"].items():
                print(f"  {choice:<50} {100 * v['val/zsl/mAP']:5.1f} / {100 * v['val/gzsl/mAP']:5.1f}")
            print(f"  chosen: {' '.join(r['chosen'])}")
        print("CLIP matching (not tuned; the reference's top-k 16), by top-k: " + ", ".join(
            f"{k}: {100 * v['val/zsl/mAP']:.1f} / {100 * v['val/gzsl/mAP']:.1f}" for k, v in clip.items()))
        if args.json:
            Path(args.json).write_text(json.dumps({"heads": tuned, "clip_top_k": clip}, indent=1))
        return 0
    from sigrl.demo import run_demo

    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    results = []
    for seed in seeds:
        t = time.time()
        done = Path(args.out) / f"seed-{seed}" / "results.json"
        if args.reuse and done.is_file():
            results.append(json.loads(done.read_text(encoding="utf-8")))
            print(f"seed {seed}: read {done}", file=sys.stderr, flush=True)
            continue
        results.append(run_demo(seed=seed, output=Path(args.out) / f"seed-{seed}", full=args.full, progress=False))
        print(f"seed {seed}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    text, means = table(results)
    untuned = [r for r, seed in zip(results, seeds) if seed != TUNING_SEED]
    untuned_seeds = [seed for seed in seeds if seed != TUNING_SEED]
    untuned_means = table(untuned)[1] if untuned and len(untuned) < len(results) else None
    checks = goals(means, untuned_means, "seeds " + ", ".join(map(str, untuned_seeds)) + " (not used for tuning)")
    print(f"\nworld seeds {seeds}, {'full' if args.full else 'default'} demo rows, mean ± sd over seeds (%)\n")
    print(text)
    if untuned_means:
        print(f"\nseeds {untuned_seeds} (not used for tuning), mean ZSL / GZSL mAP: " + ", ".join(
            f"{k} {100 * untuned_means[f'zsl/{k}']:.1f} / {100 * untuned_means[f'gzsl/{k}']:.1f}"
            for k in ("clip", "clip_local", "adapter", "sigrl") if f"zsl/{k}" in untuned_means))
    print("\ngoals:")
    for name, ok, detail in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")
    print(f"\ntotal {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "results": results, "means": means,
                                               "goals": [{"goal": n, "met": ok, "detail": d} for n, ok, d in checks],
                                               "seconds": time.time() - t0}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
