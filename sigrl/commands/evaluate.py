"""``sigrl eval RUN``: re-evaluate a trained run on its dataset (from the feature cache)."""
from __future__ import annotations

import argparse
import json


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(
        verb, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Evaluate the head saved in a run directory on its dataset's test (or val) split. Zero-shot "
            "datasets: ZSL (unseen labels only) and GZSL (all labels) with P/R/F1 at 3 and 5 and mAP; others: "
            "mAP. Writes RUN/eval.json. mAP counts a class without a positive as AP 0 unless --empty-class skip."),
        epilog="examples:\n  sigrl eval runs/world_zsl\n  sigrl eval runs/voc_spml --split val --json")
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by 'sigrl train'")
    p.add_argument("--split", choices=["test", "val"], default="test", help="which split (default test)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--empty-class", choices=["zero", "skip"],
                   help="mAP rule for a class without a positive (default: the run's eval.empty_class)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import evaluate_run, format_metrics

    result = evaluate_run(args.run_dir, split=args.split, device=args.device, empty_class=args.empty_class,
                          progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"run: {result['run']} (epoch {result['epoch']}), split {result['split']}: {result['num_images']} images, "
          f"{result['labels']['all']} labels ({result['labels']['unseen']} unseen)")
    print(format_metrics(result["metrics"], empty_class=result["empty_class"]))
    return 0
