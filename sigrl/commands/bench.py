"""``sigrl bench``: paper-style benchmark tables."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError

REFERENCE_PREPROCESS = {"resize_size": 256, "image_size": 224, "interpolation": "bicubic",
                        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(verb, help=help_text, description=(
        "Run the protocols of the papers and write the table as markdown, JSON and CSV plus plots.\n"
        "  nuswide-zsl  plain CLIP matching and/or trained runs on the NUS-WIDE zero-shot test split\n"
        "  spml         compare single-positive runs (mAP)\n"
        "  partial      compare partial-label runs (mAP per proportion and average)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sigrl bench nuswide-zsl --root NUS-WIDE --model ViT-B-16 --pretrained vitb16.pt --checkpoint runs/nus\n"
               "  sigrl bench spml runs/voc_an runs/voc_em_apl --output bench/voc")
    p.add_argument("protocol", choices=["nuswide-zsl", "spml", "partial"])
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories (spml, partial)")
    p.add_argument("--root", help="nuswide-zsl: the NUS-WIDE directory (official or BiAM/MKT layout)")
    p.add_argument("--layout", default="auto", choices=["auto", "official", "biam"])
    p.add_argument("--image-root", help="where Flickr/ lives when not under --root")
    p.add_argument("--checkpoint", action="append", default=[], help="a trained run to score with (repeatable)")
    p.add_argument("--model", help="backbone for plain CLIP matching (open_clip name, JSON config or HF directory)")
    p.add_argument("--pretrained", help="open_clip tag or local checkpoint file")
    p.add_argument("--prompts", help="prompt set for plain CLIP matching (default: scene, as MKT/SigRL)")
    p.add_argument("--preprocess", choices=["reference", "model"], default="reference",
                   help="reference: resize 256 bicubic, crop 224, ImageNet mean/std (MKT/SigRL); model: the backbone's own")
    p.add_argument("--empty-class", choices=["zero", "skip"], default="zero",
                   help="classes without a positive: AP 0 (reference, default) or skipped")
    p.add_argument("--limit", type=int, help="score only the first N test images (a quick check)")
    p.add_argument("--cache-dir", help="feature cache folder (default OUTPUT/cache)")
    p.add_argument("--output", "-o", default="bench", help="output folder (default ./bench)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import bench_nuswide_zsl, bench_runs, load_scorers
    from ..report import markdown_table

    out = Path(args.output)
    problems: list[str] = []
    if args.protocol == "nuswide-zsl":
        if not args.root:
            raise UsageError("nuswide-zsl needs --root NUS-WIDE-DIR")
        pre = REFERENCE_PREPROCESS if args.preprocess == "reference" else None
        scorers = load_scorers(args.checkpoint, args.model, args.pretrained, args.prompts, pre, args.device)
        tables = bench_nuswide_zsl(args.root, scorers, out, layout=args.layout, image_root=args.image_root,
                                   cache_root=args.cache_dir, empty_class=args.empty_class, limit=args.limit)
    else:
        if not args.runs:
            raise UsageError(f"{args.protocol} needs one or more RUN directories")
        tables, problems = bench_runs(args.protocol, args.runs, out)
        for problem in problems:
            print(f"sigrl bench: skipped {problem}", file=sys.stderr)
    for name, rows in tables.items():
        print(f"\n{name}\n" + markdown_table(rows, sorted({c for r in rows.values() for c in r})))
    print(f"written: {out / 'results.md'}, results.json, results.csv")
    return 1 if args.protocol != "nuswide-zsl" and problems else 0
