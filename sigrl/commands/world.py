"""``sigrl world``: the embedded synthetic world and its tiny vision-language model.

    sigrl world generate [--seed N] [--quick] [--output DIR]
    sigrl world pretrain [--seed N] [--quick] [--world DIR]

``generate`` writes the dataset (generic CSV format, see :mod:`sigrl.world.generator`)
into ``--output`` or the cache (reused when already there). ``pretrain`` trains the
tiny CLIP-style model on the world's captions (generating the world first when
``--world`` is not given) and caches ``model.json`` + ``model.safetensors``. Both print
where things were written.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError, UsageError


def register(subparsers, verb: str, help_text: str) -> None:
    p = subparsers.add_parser(verb, help=help_text, description=help_text)
    sub = p.add_subparsers(dest="world_action", metavar="ACTION")

    g = sub.add_parser("generate", help="generate the world's images and CSV files",
                       description="Generate the embedded world (images, labels.txt, unseen.txt, "
                       "train/val/test.csv, captions.csv, world.json).")
    g.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    g.add_argument("--quick", action="store_true", help="a micro world of a few hundred images")
    g.add_argument("--output", metavar="DIR", help="write here instead of the cache directory")
    g.set_defaults(func=run_generate)

    t = sub.add_parser("pretrain", help="pre-train the tiny vision-language model on the captions",
                       description="Pre-train the tiny CLIP-style model contrastively on the world's "
                       "captions (cached; reused when present).")
    t.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    t.add_argument("--quick", action="store_true", help="micro world and a few-second run")
    t.add_argument("--world", metavar="DIR", help="an existing world directory (default: the cached world of --seed)")
    t.set_defaults(func=run_pretrain)
    p.set_defaults(func=run)


def run(args) -> int:
    """``sigrl world`` without an action."""
    raise UsageError("choose an action: sigrl world generate | sigrl world pretrain (see sigrl world --help)")


def run_generate(args) -> int:
    from ..world.generator import WorldSpec, ensure_world, generate_world, is_finished

    spec = WorldSpec.quick(seed=args.seed) if args.quick else WorldSpec(seed=args.seed)
    if args.output:
        out = Path(args.output)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory")
        if is_finished(out, spec):
            print(f"world already there: {out}")
            return 0
        if out.is_dir() and any(out.iterdir()) and not (out / "world.json").exists() and not (out / "images").exists():
            raise UsageError(f"{out}: directory is not empty and holds no world; choose another --output")
        root = generate_world(spec, out, progress=True)
    else:
        root = ensure_world(spec, progress=True)
    _print_world(root)
    return 0


def run_pretrain(args) -> int:
    from ..world.generator import WorldSpec, ensure_world
    from ..world.pretrain import PretrainSpec, ensure_tiny_vlp

    if args.world:
        root = Path(args.world)
        if not (root / "world.json").is_file():
            raise DataError(f"{root}: not a finished world (no world.json); run: sigrl world generate --output {root}")
    else:
        spec = WorldSpec.quick(seed=args.seed) if args.quick else WorldSpec(seed=args.seed)
        root = ensure_world(spec, progress=True)
    tspec = PretrainSpec.quick(seed=args.seed) if args.quick else PretrainSpec(seed=args.seed)
    config, weights = ensure_tiny_vlp(root, tspec, progress=True)
    info = json.loads((config.parent / "train.json").read_text(encoding="utf-8"))
    print(f"world:   {root}")
    print(f"config:  {config}")
    print(f"weights: {weights}")
    if info.get("first_loss") is not None:
        print(f"contrastive loss {info['first_loss']:.3f} -> {info['last_loss']:.3f} "
              f"({len(info.get('losses', []))} steps, {info.get('seconds')} s)")
    print(f"use it: sigrl tag IMAGES --model {config} --pretrained {weights} --labels \"red star,blue ring\"")
    return 0


def _print_world(root: Path) -> None:
    meta = json.loads((root / "world.json").read_text(encoding="utf-8"))
    counts = meta.get("counts", {})
    print(f"world: {root}")
    print(f"  {len(meta['labels'])} labels ({len(meta['unseen'])} unseen), "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + " images")
    for name in ("labels.txt", "unseen.txt", "train.csv", "val.csv", "test.csv", "captions.csv", "world.json"):
        print(f"  {root / name}")
