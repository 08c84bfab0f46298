"""``sigrl export onnx``: the image and text towers (and, for a fixed label list, the
scores: a trained head included) as ONNX graphs for ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(verb, help=help_text, description=(
        "Write image.onnx (pixels -> global + local features), text.onnx (tokens -> text "
        "embeddings) and export.json (preprocessing, shapes) for ONNX Runtime. With --labels "
        "also scores.onnx (features -> each label's score, as 'sigrl tag' gives them: a run's "
        "trained head and prompt context with --checkpoint, the calibration's maps with "
        "--calibration); 'sigrl tag --onnx DIR' then tags with ONNX Runtime alone. Needs the onnx "
        "extra (pip install 'sigrl[onnx]')."),
        epilog="examples:\n  sigrl export onnx out/ --model world\n"
               "  sigrl export onnx out/ --checkpoint runs/world_zsl --labels 'red star,blue ring'\n"
               "  sigrl tag photos/ --onnx out/ --format jsonl",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["onnx"], help="export format")
    p.add_argument("output", metavar="DIR", help="folder to write into (created)")
    p.add_argument("--model", help="as in 'sigrl tag'")
    p.add_argument("--pretrained", help="as in 'sigrl tag'")
    p.add_argument("--checkpoint", help="a run directory: its backbone (and with --labels its head)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="comma-separated label names: also write scores.onnx for them")
    g.add_argument("--labels-file", help="a text file with one label name per line (as --labels)")
    p.add_argument("--prompts", help="as in 'sigrl tag' (with --labels)")
    p.add_argument("--scores", choices=["independent", "softmax"], default="independent", help="as in 'sigrl tag'")
    p.add_argument("--calibration", metavar="FILE", help="as in 'sigrl tag': its maps go into scores.onnx, "
                   "its thresholds into export.json")
    p.add_argument("--threshold", type=float, help="as in 'sigrl tag' (recorded per label in export.json)")
    p.add_argument("--thresholds", metavar="FILE", help="as in 'sigrl tag' (recorded in export.json)")
    p.add_argument("--global-only", action="store_true", help="as in 'sigrl tag'")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.checkpoint and (args.model or args.pretrained):
        raise UsageError("--checkpoint brings its own backbone: drop --model/--pretrained")
    labelled = args.labels is not None or args.labels_file is not None
    if not labelled and (args.prompts or args.calibration or args.threshold is not None or args.thresholds
                         or args.scores != "independent" or args.global_only):
        raise UsageError("--prompts/--scores/--calibration/--threshold(s)/--global-only shape scores.onnx: give --labels")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file (give a folder)")
    from ..export import _need_onnx

    _need_onnx()
    from ..backbones import backbone_from_spec, load_backbone
    from ..export import export_onnx

    tagger = None
    thresholds = None
    if labelled:
        from ..tagging import Tagger
        from .tag import read_labels

        if args.thresholds:
            from ..calibration import read_thresholds

            thresholds = read_thresholds(args.thresholds)
        tagger = Tagger(read_labels(args), model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                        prompts=args.prompts, scores=args.scores, calibration=args.calibration,
                        mode="global" if args.global_only else "local+global")
        backbone = tagger.backbone
    elif args.checkpoint:
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
    info = export_onnx(backbone, out, opset=args.opset, tagger=tagger, threshold=args.threshold,
                       thresholds=thresholds)
    extra = f", scores.onnx ({len(info['labels'])} labels, {info['score_kind']})" if tagger is not None else ""
    print(f"wrote {out}/image.onnx, text.onnx{extra}, export.json (D={info['embed_dim']}, P={info['patches']})")
    return 0
