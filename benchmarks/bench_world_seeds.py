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
thread, empty cache per seed, beside another benchmark; 266 s in all), mean ± sd over seeds
0, 1, 2 (%), ZSL / GZSL mAP: random 9.1 / 9.1, colour oracle 21.2 / 20.8, shape oracle 17.6 /
17.1, bag oracle 35.9 / 36.7, CLIP matching 35.0 ± 5.1 / 38.0 ± 1.3 (global 33.1, local
42.9 ± 4.4 / 45.9), adapter 41.9 ± 4.7 / 52.5 ± 1.4, SigRL 42.3 ± 4.3 / 49.9 ± 1.2; on seeds
1, 2 alone: CLIP 35.4 / 37.6, local 43.3 / 45.2, adapter 41.7 / 53.3, SigRL 42.0 / 49.6.
Single positive (the config's centered rule, lrs tuned with v4): full 66.9 ± 0.8, AN 44.6 ±
2.2, EM 62.7 ± 3.5 (81 % of the gap), EM+APL 62.7 ± 3.6. Goals met: shape probe 0.9 (0.915:
0.911, 0.928, 0.907), local > global, SigRL >= CLIP + 5 (ZSL, GZSL), SigRL > adapter on ZSL
(42.0 vs 41.7), AN -> full gap >= 5 (22.3), 50 % of it (EM 81 %); missed: 2x colour oracle
(1.65x; local alone 2.02x), SigRL > adapter on GZSL (49.6 vs 53.3).
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
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
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
