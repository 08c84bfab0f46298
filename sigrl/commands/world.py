"""``sigrl world``: the embedded synthetic world and its tiny vision-language model.

    sigrl world generate [--seed N] [--quick] [--output DIR]
    sigrl world pretrain [--output DIR] [--steps N]

``generate`` writes the dataset (generic CSV format, see :mod:`sigrl.world.generator`)
into ``--output`` or the cache (reused when already there). ``pretrain`` trains the
world model shipped in the package (``--model world``) from scratch on its own fixed
corpus (:mod:`sigrl.world.ship`). Both print where things were written.
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

    t = sub.add_parser("pretrain", help="pre-train the world model (the one shipped in the package) from scratch",
                       description="Pre-train the tiny open_clip model on its own fixed corpus, exactly as the "
                       "model shipped in the package was trained (its manifest records the command); writes "
                       "train.log, checkpoints/, world.json, world.safetensors, train.json and manifest.json into "
                       "--output (10,000 contrastive steps of 128, then 1,500 steps of colour- and shape-twin pairs that "
                       "teach it to bind colour to shape: about 65 minutes with --threads 2 on a 2-core CPU). --steps N "
                       "stops early on the same schedule (its loss curve compares step by "
                       "step with the shipped one: benchmarks/bench_world_pretrain.py).")
    t.add_argument("--output", "-o", metavar="DIR", default="world-model", help="output folder (default ./world-model)")
    t.add_argument("--steps", type=int, default=None, help="stop after N steps (same schedule)")
    t.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1; the shipped model was trained with 2)")
    t.add_argument("--no-report", action="store_true", help="skip the probe / zero-shot report")
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
    from ..world.ship import ShipSpec, train_world_model, write_manifest

    out = Path(args.output)
    if out.exists() and (out / "train.log").exists():
        raise UsageError(f"{out}: holds a pre-training run already; choose another --output")
    train_world_model(out, ShipSpec(), max_steps=args.steps, threads=args.threads)
    report = None
    if not args.no_report:
        from ..backbones import load_backbone
        from ..world.probe import model_report

        report = model_report(load_backbone(str(out / "world.json"), str(out / "world.safetensors")))
    cmd = ("sigrl world pretrain --output DIR" + (f" --steps {args.steps}" if args.steps else "")
           + (f" --threads {args.threads}" if args.threads != 1 else ""))
    manifest = write_manifest(out, command=cmd, report=report, dest=out)
    print(f"config:  {out / 'world.json'}")
    print(f"weights: {out / 'world.safetensors'} (sha256 {manifest['sha256'][:16]}...)")
    print(f"{manifest['steps']} steps, final loss {manifest['final_loss']}, {manifest['train_seconds']} s")
    if report:
        print(f"probes {report['probe']}, unseen mAP {report['zsl']}")
    print(f"use it: sigrl tag IMAGES --model {out / 'world.json'} --pretrained {out / 'world.safetensors'} "
          "--labels \"red star,blue ring\"  (the shipped one: --model world)")
    return 0


def _print_world(root: Path) -> None:
    meta = json.loads((root / "world.json").read_text(encoding="utf-8"))
    counts = meta.get("counts", {})
    print(f"world: {root}")
    print(f"  {len(meta['labels'])} labels ({len(meta['unseen'])} unseen), "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + " images")
    for name in ("labels.txt", "unseen.txt", "train.csv", "val.csv", "test.csv", "captions.csv", "world.json"):
        print(f"  {root / name}")
