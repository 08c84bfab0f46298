"""``sigrl train CONFIG``: train a head from a YAML run config (Accelerate).

Runs on one process, or on several with ``torchrun --nproc_per_node N -m sigrl train
CONFIG`` / ``accelerate launch -m sigrl train CONFIG`` (``train.batch_size`` is the global
batch, split across processes). A failure in one process stops the run and names it.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import SigrlError


from ..registry import HEADS, LOSSES, PROMPT_LEARNERS, RECOVERIES  # names only: no torch import for --help


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(
        verb, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a SigRL head (or the adapter baseline) on frozen-backbone features from a YAML run "
            "config. Features come from the feature cache (built on first use). Writes the run directory "
            "(config 'output'): head.safetensors, run.json, config.yaml, metrics.csv, eval.json and the "
            "training state for --resume. Exit 0 when done, 1 when done but some images were unreadable "
            "and skipped, 2 on a bad config or input."),
        epilog="examples:\n"
               "  sigrl train configs/world_zsl.yaml\n"
               "  sigrl train configs/voc_spml.yaml --set data.root=/data/VOC2012 --set train.epochs=5\n"
               "  sigrl train configs/world_zsl.yaml --resume\n"
               "  sigrl train configs/world_spml_an.yaml --set loss.name=vlpl -o runs/vlpl\n"
               "  sigrl train configs/world_spml_an.yaml --set data.observed=partial --set data.proportion=0.1 "
               "--set loss.name=sst\n"
               "  sigrl train configs/world_coop.yaml            # CoOp: the prompts alone (head.class none)\n"
               "  sigrl train configs/world_dualcoop.yaml --set head.class=sigrl   # DualCoOp + the SigRL head\n"
               "  torchrun --nproc_per_node 2 -m sigrl train configs/world_zsl.yaml\n\n"
               f"heads (head.class): {' '.join(HEADS.names)}; losses (loss.name): {' '.join(LOSSES.names)}; "
               "+ loss.transport_weight=W adds the conditional-transport loss; "
               f"label recovery (method.name): {' '.join(RECOVERIES.names)}; "
               f"prompt learners (prompts.learner): {' '.join(PROMPT_LEARNERS.names)}; head.class none trains the "
               "prompts alone")
    p.add_argument("config", help="a run config (YAML), e.g. configs/world_zsl.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable; value parsed as YAML)")
    p.add_argument("--output", "-o", help="run directory (overrides 'output' in the config)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last saved epoch")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run(args) -> int:
    from ..config import load_config
    from ..evaluate import format_metrics
    from ..train import train

    cfg = load_config(args.config, args.overrides)
    if args.output:
        cfg.output = args.output
    rank, world = _rank()
    try:
        result = train(cfg, resume=args.resume, progress=not args.quiet)
    except SigrlError:
        raise  # sigrl.cli prints it on one line, naming the process in a multi-process run
    except Exception as err:  # a bug: the traceback follows; say which process it came from
        if world > 1:
            sys.stderr.write(f"sigrl train: rank {rank} of {world}: failed: {type(err).__name__}: {err}\n")
        raise
    if rank != 0:
        return 0
    best = result.best_metrics
    test = {k[len("test/"):]: v for k, v in best.items() if k.startswith("test/")}
    print(f"run: {result.run_dir}")
    print(f"best epoch: {result.best_epoch} (selected by {result.early_stop or 'last epoch'})")
    if test:
        print(format_metrics(test, empty_class=cfg.eval.empty_class, title="test metrics of the saved head:"))
    if result.skipped_images:
        print(f"sigrl train: {result.skipped_images} unreadable images were skipped (see the cache manifests)",
              file=sys.stderr)
        return 1
    return 0
