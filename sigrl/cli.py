"""The ``sigrl`` command line.

Each verb lives in ``sigrl/commands/<verb>.py`` with two functions:
``register(subparsers)`` adds its parser (and ``set_defaults(func=run)``) and
``run(args) -> int`` does the work and returns the exit code. This file only
dispatches and turns :class:`~sigrl.errors.SigrlError` into a one-line message.

Exit codes: 0 all done, 1 done but some inputs skipped, 2 usage error / unusable input.

Inside a multi-process launch (``torchrun``, ``accelerate launch``: ``WORLD_SIZE`` > 1) the
message names the process: ``sigrl train: rank 1 of 2: error: ...``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import SigrlError

# (verb, module under sigrl.commands, one-line help). Order = order in --help.
VERBS = [
    ("tag", "tag", "tag images with label names never trained on (zero-shot)"),
    ("calibrate", "calibrate", "fit tagging score maps and per-label thresholds from a labelled set"),
    ("export", "export", "export the image and text towers for ONNX Runtime"),
    ("train", "train", "train a SigRL head (or a baseline) from a YAML run config"),
    ("eval", "evaluate", "evaluate a trained run on its test split"),
    ("bench", "bench", "paper-style benchmark tables: nuswide-zsl, spml, partial"),
    ("data", "data", "check a dataset on disk (nuswide, voc, coco, csv)"),
    ("cache", "cache", "build the frozen-backbone feature cache of a dataset"),
    ("world", "world", "the embedded synthetic world and its tiny vision-language model"),
    ("demo", "demo", "run every job end to end on the embedded world (no downloads)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigrl",
        description=(
            "Multi-label image recognition with missing labels on frozen CLIP-style models: "
            "zero-shot tagging, training from single-positive or partial labels, and the "
            "NUS-WIDE / VOC / COCO benchmark protocols."
        ),
        epilog="Run 'sigrl VERB --help' for the options of a verb. Exit codes: 0 done, "
        "1 done but some inputs skipped, 2 usage error or unusable input.",
    )
    parser.add_argument("--version", action="version", version=f"sigrl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module, help_text in VERBS:
        importlib.import_module(f".commands.{module}", __package__).register(sub, verb, help_text)
    return parser


def _rank() -> str:
    """``"rank R of N: "`` in a multi-process launch (the launcher sets RANK and
    WORLD_SIZE), else ``""``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return ""
    return f"rank {os.environ.get('RANK', '?')} of {world}: " if world > 1 else ""


def _say(line: str) -> None:
    """One stderr line in one write: processes of a multi-process run share the pipe, and
    print's separate write of the newline let their lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SigrlError as err:
        if args.debug:
            raise
        _say(f"sigrl {args.verb}: {_rank()}error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _say(f"sigrl {args.verb}: {_rank()}interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
