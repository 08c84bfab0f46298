"""``sigrl calibrate``: fit score maps and per-label thresholds from a labelled set.

Reads a split in the generic CSV format (:mod:`sigrl.data.csvdata`: a dataset root and
``--split``, or one split file), scores every image against its labels with the model
``sigrl tag`` would use, fits ``p = sigmoid(a s + b)`` (one global map and one per label,
:mod:`sigrl.calibration`) and per-label thresholds (best F1, or ``--precision P``), and
writes the calibration file that ``sigrl tag --calibration FILE`` and ``Tagger`` read,
``FILE``'s thresholds as ``label,threshold`` CSV beside it, and a reliability diagram.
It prints the expected calibration error before (the default map) and after, on the
fitted split and, when the root has one, on ``--eval-split`` (default test).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DataError, UsageError


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(
        verb, help=help_text, description=__doc__.split("\n\n", 1)[1],
        epilog="examples:\n  sigrl calibrate data/ --split val --model world.json --pretrained world.safetensors -o cal.json\n"
               "  sigrl calibrate data/val.csv --checkpoint runs/x --precision 0.9 -o cal.json\n"
               "  sigrl tag photos/ --labels-file data/labels.txt --calibration cal.json --top-k 0",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="dataset root (labels.txt + split files) or one split file (.csv/.jsonl)")
    p.add_argument("--split", default="val", help="split of DATA to fit on (default val)")
    p.add_argument("--eval-split", default="test", help="split to report the ECE and F1 on too, when DATA has it "
                   "(default test; 'none' to skip)")
    p.add_argument("--model", help="as in 'sigrl tag'")
    p.add_argument("--pretrained", help="as in 'sigrl tag'")
    p.add_argument("--checkpoint", help="a run directory from 'sigrl train'")
    p.add_argument("--prompts", help="prompt set, as in 'sigrl tag' (the calibration is valid for this set only)")
    p.add_argument("--global-only", action="store_true", help="as in 'sigrl tag'")
    p.add_argument("--precision", type=float, help="thresholds: the lowest reaching this precision per label "
                   "(default: best F1 per label)")
    p.add_argument("--output", "-o", default="calibration.json", help="calibration file (default calibration.json)")
    p.add_argument("--plot", help="reliability diagram PNG (default: OUTPUT with .png)")
    p.add_argument("--features", metavar="DIR", help="feature store, as in 'sigrl tag --features'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default as in 'sigrl tag')")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def load_split(data: str, split: str):
    from ..data.csvdata import find_split_file, load_csv_split

    path = Path(data)
    if path.is_file():
        return load_csv_split(path)
    if not path.is_dir():
        raise DataError(f"{data}: no such dataset root or split file")
    found = find_split_file(path, split)
    if found is None:
        raise DataError(f"{path}: no {split}.csv or {split}.jsonl (choose a split with --split)")
    return load_csv_split(found, root=path)


def scores_of(tagger, split, what: str):
    """Raw per-label scores (N', C) and targets (N', C) of the images that could be read."""
    import numpy as np

    paths = [split.path(i) for i in range(len(split))]
    rows, keep = [], []
    for i, (path, s, err) in enumerate(tagger.iter_scores(paths, progress=True, raw=True)):
        if s is None:
            print(f"sigrl calibrate: skipped {path}: {err}", file=sys.stderr)
            continue
        rows.append(s.numpy())
        keep.append(i)
    if not rows:
        raise DataError(f"{what}: no image could be read")
    return np.stack(rows), split.targets[keep]


def run(args) -> int:
    from .tag import check_device, default_workers

    if args.precision is not None and not 0 < args.precision <= 1:
        raise UsageError(f"--precision must be in (0, 1], got {args.precision}")
    if args.checkpoint and (args.model or args.pretrained):
        raise UsageError("--checkpoint brings its own backbone: drop --model/--pretrained")
    out = Path(args.output)
    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"--output {out}: give a file in an existing folder")
    check_device(args.device)
    fit_split = load_split(args.data, args.split)
    eval_split = None
    if Path(args.data).is_dir() and args.eval_split not in ("none", "", args.split):
        from ..data.csvdata import find_split_file

        if find_split_file(args.data, args.eval_split) is not None:
            eval_split = load_split(args.data, args.eval_split)

    import numpy as np

    from ..calibration import default_map, ece, fit, reliability_diagram, sigmoid, threshold_f1, write_thresholds
    from ..tagging import Tagger

    tagger = Tagger(fit_split.labels, model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                    prompts=args.prompts, mode="global" if args.global_only else "local+global",
                    batch_size=args.batch_size, device=args.device, features=args.features,
                    num_workers=default_workers() if args.workers is None else args.workers)
    labels = tagger.labels
    if labels != list(fit_split.labels):
        raise DataError(f"{args.data}: label names must be unique and stripped for calibration")
    S, T = scores_of(tagger, fit_split, args.split)
    default = default_map(tagger.backbone, tagger.head is not None)
    cal = fit(S, T, labels, default=default, rule="precision" if args.precision else "f1",
              precision=args.precision, scorer=tagger.identity)
    known = np.where(T != 0, (T == 1).astype(float), -1)
    before = sigmoid(S * default[0] + default[1])
    after = cal.probabilities(S, labels)
    print(f"{args.split}: {S.shape[0]} images x {len(labels)} labels; map a={cal.a:.3f} b={cal.b:.3f} "
          f"(default a={default[0]:g} b={default[1]:g}); {sum('a' in e for e in cal.labels.values())} label(s) "
          "with their own map")
    print(f"{args.split}: ECE before {ece(before, known):.4f}, after {ece(after, known):.4f}")
    curves = {f"{args.split} before": (before, known), f"{args.split} after": (after, known)}
    if eval_split is not None:
        if list(eval_split.labels) != labels:
            tagger.set_labels(eval_split.labels)
        S2, T2 = scores_of(tagger, eval_split, args.eval_split)
        known2 = np.where(T2 != 0, (T2 == 1).astype(float), -1)
        names2 = tagger.labels
        before2 = sigmoid(S2 * default[0] + default[1])
        after2 = cal.probabilities(S2, names2)
        per = threshold_f1(after2, T2, names2, cal)
        one = threshold_f1(after2, T2, names2, cal, global_only=True)
        cal.info.update({"eval_split": args.eval_split, "eval_ece_before": ece(before2, known2),
                         "eval_ece_after": ece(after2, known2), "eval_f1_per_label": per, "eval_f1_global": one})
        print(f"{args.eval_split}: ECE before {cal.info['eval_ece_before']:.4f}, after {cal.info['eval_ece_after']:.4f}")
        print(f"{args.eval_split}: per-label thresholds macro-F1 {per['macro_f1']:.4f} micro-F1 {per['micro_f1']:.4f}; "
              f"one global threshold ({cal.threshold:.3f}) macro-F1 {one['macro_f1']:.4f} micro-F1 {one['micro_f1']:.4f}")
        curves.update({f"{args.eval_split} before": (before2, known2), f"{args.eval_split} after": (after2, known2)})
    cal.save(out)
    thr = out.with_name(out.stem + ".thresholds.csv")
    write_thresholds(thr, {**{l: cal.threshold for l in labels}, **cal.thresholds()})
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    reliability_diagram(plot, curves, title=f"sigrl calibrate {Path(args.data).name}: reliability")
    print(f"wrote {out}, {thr}, {plot}")
    return 0
