"""``sigrl cache build CONFIG``: encode a dataset's images once with the frozen backbone.

Several processes share the work under ``torchrun --nproc_per_node N -m sigrl cache build
CONFIG`` (each encodes its own shards). An interrupted build resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(verb, help=help_text, description=help_text)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    b = actions.add_parser(
        "build", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="encode the splits of a run config's dataset into the feature cache",
        description=(
            "Encode every image of the dataset's splits with the config's frozen backbone into float16 "
            "memory-mapped shards under cache.dir (resumable; unreadable images are recorded and skipped). "
            "Exit 0 when done, 1 when some images were unreadable, 2 on errors."),
        epilog="examples:\n  sigrl cache build configs/world_zsl.yaml\n"
               "  torchrun --nproc_per_node 2 -m sigrl cache build configs/nuswide_zsl.yaml --set data.root=/data/nus")
    b.add_argument("config", help="a run config (YAML)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    b.add_argument("--splits", default="train,val,test", help="comma-separated splits (default train,val,test)")
    b.add_argument("--rebuild", action="store_true", help="delete and rebuild existing caches of these splits")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    b.set_defaults(func=run_build)
    i = actions.add_parser("info", help="show what a cache folder holds", description="Print a cache manifest summary.")
    i.add_argument("directory", help="a cache folder (holding manifest.json)")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_build(args) -> int:
    from accelerate import PartialState

    from ..cache import cache_dir_for, ensure_cache
    from ..config import load_config
    from ..errors import UsageError
    from ..experiment import build_backbone, features_root, open_dataset

    cfg = load_config(args.config, args.overrides)
    state = PartialState(cpu=not __import__("torch").cuda.is_available())
    wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in wanted if s not in ("train", "val", "test")]
    if bad:
        raise UsageError(f"--splits: unknown split(s) {', '.join(bad)} (use train, val, test)")
    with state.main_process_first():
        dataset, world = open_dataset(cfg)
        backbone = build_backbone(cfg, world, state.device)
    root = features_root(cfg)
    failed = 0
    for name in wanted:
        split = getattr(dataset, name)
        if split is None:
            continue
        cache = ensure_cache(split, backbone, root, shard_size=cfg.cache.shard_size,
                             batch_size=cfg.cache.build_batch_size, state=state, rebuild=args.rebuild,
                             progress=not args.quiet)
        failed += len(cache.failed)
        if state.is_main_process:
            print(f"{name}: {cache.num_images} images, {len(cache.failed)} failed -> "
                  f"{cache_dir_for(root, split, backbone)}")
    return 1 if failed else 0


def run_info(args) -> int:
    from ..cache import MANIFEST, open_cache

    cache = open_cache(args.directory)
    m = cache.manifest
    print(json.dumps({k: m[k] for k in ("split", "num_images", "embed_dim", "num_patches", "dtype", "shard_size",
                                        "fingerprint", "image_list_sha256", "preprocess", "backbone")}, indent=1))
    print(f"{len(m['shards'])} shards, {len(m['failed'])} failed images (see {Path(args.directory) / MANIFEST})",
          file=sys.stderr)
    return 0
