"""Single-positive and partial-label methods side by side on the embedded world.

Every row trains the same head (``--head``) on the same cached frozen features of the
world's training split, with every label of the world as a training label
(``configs/world_spml_an.yaml``), and reports test mAP (full labels):

    single positive: full-label BCE (upper bound), AN, WAN, EPR, ROLE, EM, EM+APL, LL-R
    partial (10%, 50%, 90% of each image's labels known): BCE on known labels, SST, CLSL

    python benchmarks/bench_spml.py [--head sigrl|adapter] [--epochs N] [--max-train-images N]
                                    [--only an,em,...] [--output DIR] [--json]

Writes DIR/results.{md,json,csv} and prints the table. The world is a functional and
comparative testbed, not a claim about real data. The goal (issue 6): the best
single-positive method closes at least half the gap between AN and full labels.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPML = {
    "full": ["data.observed=full", "loss.name=full"],
    "an": ["loss.name=an"],
    "wan": ["loss.name=wan"],
    "epr": ["loss.name=epr", "loss.options.expected_num_pos=2.5"],
    "role": ["loss.name=role", "loss.options.expected_num_pos=2.5"],
    "em": ["loss.name=em"],
    "em_apl": ["loss.name=em_apl"],
    "ll_r": ["loss.name=ll_r"],
}
PARTIAL = {"bce": ["loss.name=full"], "sst": ["loss.name=full", "method.name=sst"],
           "clsl": ["loss.name=full", "method.name=clsl"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", default="sigrl", choices=["sigrl", "adapter"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-train-images", type=int, default=None)
    ap.add_argument("--proportions", default="0.1,0.5,0.9")
    ap.add_argument("--only", help="comma-separated row names to run (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="micro world and model (seconds; numbers meaningless)")
    ap.add_argument("--output", default="bench-spml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from sigrl.config import load_config
    from sigrl.report import markdown_table, write_report
    from sigrl.train import train

    out = Path(args.output)
    common = [f"head.class={args.head}", f"train.epochs={args.epochs}", f"data.seed={args.seed}",
              f"train.seed={args.seed}", f"cache.dir={out / 'cache'}"]
    if args.max_train_images:
        common.append(f"data.max_train_images={args.max_train_images}")
    if args.quick:
        common += ["data.world.quick=true", "backbone.pretrain.quick=true"]
    only = set(args.only.split(",")) if args.only else None
    spml_rows, partial_rows, seconds = {}, {}, {}

    def run(name: str, overrides: list[str]) -> float:
        if args.epochs <= 5 and "loss.name=em_apl" in overrides:
            overrides = overrides + [f"loss.options.warmup_epochs={max(0, args.epochs - 2)}"]
        cfg = load_config(REPO / "configs" / "world_spml_an.yaml", common + overrides + [f"output={out / 'runs' / name}"])
        run_dir = Path(cfg.output)
        if (run_dir / "state").exists():
            import shutil

            shutil.rmtree(run_dir)
        t0 = time.time()
        res = train(cfg, progress=False)
        seconds[name] = time.time() - t0
        m = res.best_metrics.get("test/mAP")
        print(f"{name:<16} test mAP {100 * m:5.1f}   ({seconds[name]:.0f} s)", file=sys.stderr, flush=True)
        return float(m)

    for name, extra in SPML.items():
        if only is None or name in only:
            spml_rows[name] = {"mAP": run(f"spml_{name}", extra)}
    for p in [float(x) for x in args.proportions.split(",") if x]:
        for name, extra in PARTIAL.items():
            if only is None or name in only:
                partial_rows.setdefault(name, {})[f"{round(100 * p)}%"] = run(
                    f"partial_{name}_{round(100 * p)}", ["data.observed=partial", f"data.proportion={p}"] + extra)
    for values in partial_rows.values():
        values["average"] = sum(values.values()) / len(values)
    tables = {}
    if spml_rows:
        tables["single positive (test mAP)"] = spml_rows
        if "an" in spml_rows and "full" in spml_rows:
            gap = spml_rows["full"]["mAP"] - spml_rows["an"]["mAP"]
            best = max((v["mAP"], k) for k, v in spml_rows.items() if k not in ("full", "an"))
            closed = (best[0] - spml_rows["an"]["mAP"]) / gap if gap > 0 else float("nan")
            print(f"AN->full gap {100 * gap:.1f} points; best method {best[1]} closes {100 * closed:.0f}% of it",
                  file=sys.stderr)
    if partial_rows:
        tables["partial labels (test mAP)"] = partial_rows
    protocol = {"data": "embedded world, every label a training label" + (" (quick)" if args.quick else ""),
                "head": args.head, "epochs": args.epochs, "max train images": args.max_train_images or "all",
                "metric": "mean over classes of AP on the test split (full labels)"}
    write_report(out, "Incomplete labels on the embedded world", tables, protocol)
    if args.json:
        print(json.dumps({"tables": tables, "seconds": seconds, "protocol": protocol}, indent=2))
    else:
        for name, rows in tables.items():
            cols = sorted({c for r in rows.values() for c in r}, key=lambda c: (c == "average", c))
            print(f"\n{name}\n" + markdown_table(rows, cols))


if __name__ == "__main__":
    main()
