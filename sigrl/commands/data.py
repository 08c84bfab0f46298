"""``sigrl data check FORMAT ROOT``: validate a dataset on disk before using it."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(verb, help=help_text, description=help_text)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser(
        "check",
        help="find the layout, validate every needed file, report counts and problems",
        description=(
            "Check a dataset root: find its layout, read every list and label file it needs, "
            "and check that the listed images exist and decode (PIL verify). Reports the numbers "
            "of seen/unseen labels and usable train/test images, and every problem with the file "
            "it is in. Exit 0: usable; 1: usable but with problems; 2: not usable (a required file "
            "is missing, a pickle asks to run code, or no usable images)."
        ),
        epilog=(
            "formats:\n"
            "  nuswide  official NUS-WIDE lists or the BiAM/MKT layout (img_names.pkl, features/*.h5)\n"
            "  voc      VOC2007/VOC2012 (Annotations/, ImageSets/Main/, JPEGImages/)\n"
            "  coco     annotations/instances_{train,val}{2014,2017}.json and image folders\n"
            "  csv      labels.txt + train/test[/val].csv or .jsonl (+ unseen.txt)\n"
            "examples:\n"
            "  sigrl data check nuswide /data/NUS-WIDE --max-images 2000\n"
            "  sigrl data check csv my_dataset/ --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("format", choices=["nuswide", "voc", "coco", "csv", "cub", "formatted"], metavar="FORMAT",
                   help="nuswide, voc, coco, csv, cub (CUB-200-2011 attributes) or formatted (Cole et al.'s .npy files)")
    c.add_argument("root", metavar="ROOT", help="the dataset root directory")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    c.add_argument("--max-images", type=int, metavar="N",
                   help="check at most N image files per split, evenly spaced (default: all)")
    c.add_argument("--year", help="VOC/COCO year when the root holds several (e.g. 2012)")
    c.add_argument("--decode", action="store_true",
                   help="decode every image completely: also finds truncated JPEGs (the default header check "
                        "does not), at about the cost of reading the whole dataset")
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..data.check import check_dataset

    if args.max_images is not None and args.max_images < 0:
        raise UsageError(f"--max-images must be 0 or more, got {args.max_images}")
    report = check_dataset(args.format, args.root, max_images=args.max_images,
                           progress=not args.no_progress, year=args.year, decode=args.decode)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    if report.error:
        print(f"sigrl data: error: {report.error}", file=sys.stderr)
    return report.exit_code
