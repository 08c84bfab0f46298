"""``sigrl demo``: the whole toolkit on the embedded world, no downloads."""
from __future__ import annotations


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(verb, help=help_text, description=(
        "Generate the embedded synthetic world (cached), load the world model shipped in the package, "
        "tag a few images, and run zero-shot (CLIP matching, adapter head, SigRL), single-positive and "
        "partial-label training on it. Prints one table and writes DIR/results.json, DIR/tags.png and plots. "
        "The world is a functional and comparative testbed, not a claim about real data."))
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    p.add_argument("--output", "-o", default="sigrl-demo", help="output folder (default ./sigrl-demo)")
    p.add_argument("--quick", action="store_true", help="a micro world and a few training steps (about a minute; numbers meaningless)")
    p.add_argument("--full", action="store_true", help="every row: all single-positive losses, partial labels, SST, CLSL")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(seed=args.seed, output=args.output, quick=args.quick, full=getattr(args, "full", False))
    return 0
