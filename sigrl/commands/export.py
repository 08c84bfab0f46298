"""``sigrl export onnx``: the image and text towers as ONNX graphs for ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(verb, help=help_text, description=(
        "Write image.onnx (pixels -> global + local features), text.onnx (tokens -> text "
        "embeddings) and export.json (preprocessing, shapes) for ONNX Runtime. Needs the onnx "
        "extra (pip install 'sigrl[onnx]'). A trained head is not exported yet: --checkpoint "
        "exports the run's backbone."),
        epilog="example:\n  sigrl export onnx out/ --model world.json --pretrained world.safetensors",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["onnx"], help="export format")
    p.add_argument("output", metavar="DIR", help="folder to write into (created)")
    p.add_argument("--model", help="as in 'sigrl tag'")
    p.add_argument("--pretrained", help="as in 'sigrl tag'")
    p.add_argument("--checkpoint", help="a run directory: export its backbone")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.checkpoint and (args.model or args.pretrained):
        raise UsageError("--checkpoint brings its own backbone: drop --model/--pretrained")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file (give a folder)")
    from ..export import _need_onnx

    _need_onnx()
    from ..backbones import backbone_from_spec, load_backbone
    from ..export import export_onnx

    if args.checkpoint:
        from ..checkpoint import load_run

        run_ = load_run(args.checkpoint)
        backbone = backbone_from_spec(run_.backbone_spec, preprocess=run_.preprocess)
    else:
        if args.model and str(args.model).endswith(".json") and not args.pretrained:
            raise UsageError(f"{args.model}: a model config holds no weights; give --pretrained FILE")
        from ..tagging import DEFAULT_MODEL, DEFAULT_PRETRAINED, SHIPPED_MODELS

        model = args.model or DEFAULT_MODEL
        own = Path(model).is_dir() or model in SHIPPED_MODELS
        backbone = load_backbone(model, args.pretrained or (None if own else DEFAULT_PRETRAINED))
    info = export_onnx(backbone, out, opset=args.opset)
    print(f"wrote {out}/image.onnx, text.onnx, export.json (D={info['embed_dim']}, P={info['patches']})")
    return 0
