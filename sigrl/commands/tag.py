"""``sigrl tag``: zero-shot tagging of image files with your own label names."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from ..errors import UsageError


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(
        verb, help=help_text, description=(
            "Tag images with label names of your choice (never trained on). Without --checkpoint "
            "the score is CLIP local+global matching; with --checkpoint a trained SigRL head is used. "
            "Scores of one image sum to 1 over the labels. Unreadable files are skipped with a "
            "reason on stderr (exit 1); exit 0 when every image was tagged, 2 on usage errors."),
        epilog="examples:\n  sigrl tag photos/ --labels 'beach,dog,sunset' --model ViT-B-16 --pretrained vitb16.pt\n"
               "  sigrl tag 'shots/*.jpg' --labels-file words.txt --checkpoint runs/world_zsl --format json",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", help="comma-separated label names, e.g. 'beach,dog,red car'")
    g.add_argument("--labels-file", help="a text file with one label name per line")
    p.add_argument("--model", help="open_clip model name (ViT-B-16), open_clip JSON config, or a Hugging Face "
                   "CLIP directory (default: ViT-B-16)")
    p.add_argument("--pretrained", help="open_clip pretrained tag or a local checkpoint file (default: openai)")
    p.add_argument("--checkpoint", help="a run directory from 'sigrl train' (uses its backbone, prompts and head)")
    p.add_argument("--prompts", help="prompt set: scene, photo, ensemble, bare, a file, or a template with {} (default: photo)")
    p.add_argument("--top-k", type=int, default=5, help="tags per image (default 5)")
    p.add_argument("--threshold", type=float, help="keep only tags scoring at least this (0..1)")
    p.add_argument("--global-only", action="store_true", help="CLIP matching with the global embedding only (no patch tokens)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format (default table)")
    p.add_argument("--output", "-o", help="write the results to this file instead of stdout (it appears when "
                   "every image is done; meanwhile rows go to OUTPUT.partial-PID)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def read_labels(args) -> list[str]:
    if args.labels is not None:
        return args.labels.split(",")
    path = Path(args.labels_file)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read label file ({err})") from err


def shown(text: str) -> str:
    """``text`` as valid UTF-8: a file name whose bytes are not UTF-8 (Python keeps them
    as lone surrogates) is written with its raw bytes as ``\\xNN`` escapes instead of
    making the output (UTF-8 file, JSON) fail to encode."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here, before any model is loaded."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r}: not a torch device (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is usable here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")


def check_output(output: str) -> None:
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"--output {output}: is a directory (give a file name)")
    if not path.parent.is_dir():
        raise UsageError(f"--output {output}: folder {path.parent} does not exist (create it first)")


def run(args) -> int:
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.checkpoint and (args.model or args.pretrained):
        raise UsageError("--checkpoint brings its own backbone: drop --model/--pretrained")
    check_device(args.device)
    if args.output:
        check_output(args.output)
    from tqdm.auto import tqdm

    from ..tagging import Tagger

    tagger = Tagger(read_labels(args), model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                    prompts=args.prompts, mode="global" if args.global_only else "local+global",
                    batch_size=args.batch_size, device=args.device)
    results, skipped = [], 0
    # --output is written to OUTPUT.partial-<pid> and renamed over OUTPUT when every image
    # is done: a run that is killed leaves the previous OUTPUT untouched (and its rows so
    # far in the .partial file), and runs writing the same OUTPUT at once never interleave.
    partial = Path(f"{args.output}.partial-{os.getpid()}") if args.output else None
    try:
        out = open(partial, "w", encoding="utf-8", newline="") if partial else sys.stdout
    except OSError as err:
        raise UsageError(f"--output {args.output}: cannot write ({err.strerror or err})") from None
    try:
        if args.format == "csv":
            writer = csv.writer(out)
            writer.writerow(["image", "rank", "label", "score"])
        for r in tagger.iter_tags(args.paths, top_k=args.top_k, threshold=args.threshold, progress=True):
            if r.error:
                skipped += 1
                tqdm.write(f"sigrl tag: skipped {shown(r.image)}: {r.error}", file=sys.stderr)
                continue
            image, tagged = shown(r.image), [(shown(label), score) for label, score in r.tags]
            if args.format == "json":
                results.append({"image": image, "tags": [{"label": l, "score": round(float(s), 6)} for l, s in tagged]})
            elif args.format == "csv":
                for rank, (label, score) in enumerate(tagged, 1):
                    writer.writerow([image, rank, label, f"{score:.6f}"])
            else:
                tags = ", ".join(f"{label} ({score:.3f})" for label, score in tagged) or "(no tag above threshold)"
                print(f"{image}\t{tags}", file=out)
        if args.format == "json":
            json.dump(results, out, indent=2, ensure_ascii=False)
            out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if partial:
        os.replace(partial, args.output)
    if skipped:
        print(f"sigrl tag: {skipped} input(s) skipped", file=sys.stderr)
    return 1 if skipped else 0
