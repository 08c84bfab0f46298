"""``sigrl tag``: zero-shot tagging of image files with your own label names.

Every format carries one record per image (:meth:`sigrl.tagging.TagResult.to_dict`):
``image``, ``scores`` (the score kind: "independent" or "softmax"), ``tags``
(label, score; best first) and ``error`` (why the image was skipped, else null).

* ``json``: one JSON array of records (written when every image is done).
* ``jsonl``: one record per line.
* ``csv``: header ``image,scores,rank,label,score,error``; one row per tag, one row with
  empty rank/label/score for an image with no tag kept, one row with ``error`` for a
  skipped image.
* ``table``: ``image<TAB>label (score), ...`` (skipped images on stderr only).

``--output FILE`` alone writes ``FILE.partial-PID`` and renames it over FILE at the end.
With ``--resume`` (jsonl or csv) records are appended to FILE as each image is done, one
``write`` each; a rerun skips the images already in FILE. A last record cut short by a
kill (no line end, or not parseable) is dropped and its image tagged again.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from ..errors import UsageError

FORMATS = ["table", "json", "jsonl", "csv"]
CSV_HEADER = ["image", "scores", "rank", "label", "score", "error"]


def register(sub, verb: str, help_text: str) -> None:
    p = sub.add_parser(
        verb, help=help_text, description=(
            "Tag images with label names of your choice (never trained on). Without --checkpoint "
            "the score is CLIP local+global matching; with --checkpoint a trained SigRL head is used. "
            "Each label's score is its own probability, sigmoid(a*s+b) of its own matching score: "
            "adding or removing other labels never changes it (the map (a, b) from --calibration, "
            "else the model's default). --scores softmax gives the old scores that sum to 1 over the "
            "labels. Unreadable files are skipped with a reason on stderr (exit 1); exit 0 when every "
            "image was tagged, 2 on usage errors."),
        epilog="examples:\n  sigrl tag photos/ --labels 'beach,dog,sunset' --model ViT-B-16 --pretrained vitb16.pt\n"
               "  sigrl tag 'shots/*.jpg' --labels-file words.txt --checkpoint runs/world_zsl --format json\n"
               "  sigrl tag big/ --labels-file words.txt --calibration cal.json --top-k 0 \\\n"
               "      --format jsonl -o tags.jsonl --resume --features feats/",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="comma-separated label names, e.g. 'beach,dog,red car'")
    g.add_argument("--labels-file", help="a text file with one label name per line")
    p.add_argument("--model", help="open_clip model name (ViT-B-16), open_clip JSON config, or a Hugging Face "
                   "CLIP directory (default: ViT-B-16)")
    p.add_argument("--pretrained", help="open_clip pretrained tag or a local checkpoint file (default: openai)")
    p.add_argument("--checkpoint", help="a run directory from 'sigrl train' (uses its backbone, prompts and head)")
    p.add_argument("--onnx", metavar="DIR", help="tag with ONNX Runtime alone: a folder from 'sigrl export onnx "
                   "--labels ...' (its labels, scores and thresholds; no --model/--checkpoint/--labels needed)")
    p.add_argument("--prompts", help="prompt set: scene, photo, ensemble, bare, a file, or a template with {} (default: photo)")
    p.add_argument("--scores", choices=["independent", "softmax"], default="independent",
                   help="independent: each label's own probability (default); softmax: scores summing to 1 "
                   "over the given labels (the old behaviour)")
    p.add_argument("--calibration", metavar="FILE", help="a calibration file from 'sigrl calibrate' (score maps "
                   "and per-label thresholds)")
    p.add_argument("--top-k", type=int, default=5, help="at most this many tags per image (default 5; 0: all labels)")
    p.add_argument("--threshold", type=float, help="keep only tags scoring at least this (0..1); with --thresholds "
                   "or --calibration: for labels without their own")
    p.add_argument("--thresholds", metavar="FILE", help="per-label thresholds, CSV rows 'label,threshold' "
                   "(they override the calibration file's)")
    p.add_argument("--global-only", action="store_true", help="CLIP matching with the global embedding only (no patch tokens)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--output", "-o", help="write the results to this file instead of stdout (it appears when "
                   "every image is done; meanwhile rows go to OUTPUT.partial-PID)")
    p.add_argument("--resume", action="store_true", help="with --output and --format jsonl/csv: append each "
                   "record as it is done and skip the images already in OUTPUT (a killed run resumes)")
    p.add_argument("--features", metavar="DIR", help="keep each image's features here (keyed by file content "
                   "and model) and reuse them: re-tagging with new labels needs no decoding or encoding")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers decoding images "
                   "(default: half the CPUs, at most 4; 0: decode in the main process)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run_identity(args, tagger) -> dict:
    """What the records of a --resume'd OUTPUT depend on: the model, head, prompts, labels,
    score kind, calibration, thresholds and top-k (a resumed run must use the same)."""
    import hashlib

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else None

    if args.onnx:
        model = {"onnx": json.loads((Path(args.onnx) / "export.json").read_text(encoding="utf-8"))}
    else:
        model = tagger.identity
    return {"model": json.loads(json.dumps(model, default=str)), "labels": list(tagger.labels),
            "scores": tagger.kind, "calibration": digest(args.calibration), "thresholds": digest(args.thresholds),
            "threshold": args.threshold, "top_k": args.top_k}


def identity_path(output: Path) -> Path:
    return output.with_name(output.name + ".sigrl.json")


def check_resume_identity(output: Path, identity: dict, has_records: bool) -> None:
    """Refuse to resume OUTPUT with another model, labels or score settings than the run
    that wrote it (its ``OUTPUT.sigrl.json``); write that file when it is missing."""
    side = identity_path(output)
    if side.exists():
        try:
            theirs = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"{side}: unreadable ({err}); delete it to resume without the check") from None
        diff = [k for k in identity if theirs.get(k) != identity[k]]
        if diff:
            raise UsageError(f"--resume {output}: it was written with other {', '.join(diff)} than this run "
                             f"(see {side}); use the same settings, or a new --output")
        return
    if has_records:
        print(f"sigrl tag: {output} has records but no {side.name}: resuming without checking the settings",
              file=sys.stderr)
    from ..safeio import atomic_write_text

    atomic_write_text(side, json.dumps(identity, indent=1, ensure_ascii=False) + "\n")


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


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) // 2))


# --------------------------------------------------------------------- records
def record(result) -> dict:
    d = result.to_dict()
    d["image"] = shown(d["image"])
    for t in d["tags"]:
        t["label"] = shown(t["label"])
    return d


def csv_rows(rec: dict) -> list[list]:
    base = [rec["image"], rec["scores"]]
    if rec["error"]:
        return [base + ["", "", "", rec["error"]]]
    if not rec["tags"]:
        return [base + ["", "", "", ""]]
    return [base + [rank, t["label"], f"{t['score']:.6f}", ""] for rank, t in enumerate(rec["tags"], 1)]


def csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def encode(rec: dict, fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps(rec, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return csv_text(csv_rows(rec))
    tags = ", ".join(f"{t['label']} ({t['score']:.3f})" for t in rec["tags"]) or "(no tag above threshold)"
    return f"{rec['image']}\t{tags}\n"


def recover(path: Path, fmt: str) -> set[str]:
    """The images already recorded in ``path`` (jsonl or csv written by --resume); a torn
    tail (a last record cut short) is removed from the file first."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]  # complete lines only
    torn = len(good) != len(data)
    text = good.decode("utf-8", errors="replace")
    done: set[str] = set()
    if fmt == "jsonl":
        lines = text.splitlines(keepends=True)
        kept = 0
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
                done.add(rec["image"])
            except (ValueError, KeyError, TypeError):
                if n != len(lines) - 1:
                    raise UsageError(f"--resume {path}: line {n + 1} is not a sigrl tag record; "
                                     "not resuming into this file") from None
                torn = True
                break
            kept += len(line.encode("utf-8"))
        if torn:
            os.truncate(path, kept)
        return done
    rows = list(csv.reader(io.StringIO(text)))
    if rows and rows[0] != CSV_HEADER:
        raise UsageError(f"--resume {path}: not a sigrl tag CSV (header {rows[0][:6]})")
    body = rows[1:]
    if body and any(len(r) != len(CSV_HEADER) for r in body[-1:]):
        body, torn = body[:-1], True
    if torn and body:  # the last image's rows may be incomplete: tag it again
        last = body[-1][0]
        while body and body[-1][0] == last:
            body.pop()
    if torn:
        from ..safeio import atomic_write_text

        atomic_write_text(path, csv_text([CSV_HEADER] + body))
    return {r[0] for r in body}


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def run(args) -> int:
    if args.top_k < 0:
        raise UsageError(f"--top-k must be 0 (all labels) or more, got {args.top_k}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.checkpoint and (args.model or args.pretrained):
        raise UsageError("--checkpoint brings its own backbone: drop --model/--pretrained")
    if args.onnx and (args.model or args.pretrained or args.checkpoint or args.prompts or args.calibration
                      or args.global_only or args.features or args.scores != "independent"):
        raise UsageError("--onnx brings its model, labels and scores: drop --model/--pretrained/--checkpoint/"
                         "--prompts/--calibration/--scores/--global-only/--features")
    if not args.onnx and args.labels is None and args.labels_file is None:
        raise UsageError("give the label names: --labels 'a,b,c' or --labels-file FILE (or --onnx DIR)")
    if args.scores == "softmax" and (args.calibration or args.thresholds):
        raise UsageError("--calibration/--thresholds hold probabilities of independent scores: drop --scores softmax")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE (the file to append to)")
    if args.resume and args.format not in ("jsonl", "csv"):
        raise UsageError(f"--resume appends records: use --format jsonl or csv, not {args.format}")
    workers = default_workers() if args.workers is None else args.workers
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    check_device(args.device)
    if args.output:
        check_output(args.output)
    thresholds = None
    if args.thresholds:
        from ..calibration import read_thresholds

        thresholds = read_thresholds(args.thresholds)
    from tqdm.auto import tqdm

    from ..tagging import Tagger

    done: set[str] = set()
    if args.resume:
        done = recover(Path(args.output), args.format)
    if args.onnx:
        from ..export import OnnxTagger

        tagger = OnnxTagger(args.onnx, batch_size=args.batch_size, num_workers=workers)
        if (args.labels is not None or args.labels_file is not None):
            from ..prompts import clean_labels

            if clean_labels(read_labels(args)) != tagger.labels:
                raise UsageError(f"{args.onnx} scores the labels it was exported with ({', '.join(tagger.labels[:5])}"
                                 f"{', ...' if len(tagger.labels) > 5 else ''}); drop --labels or export again")
    else:
        tagger = Tagger(read_labels(args), model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                        prompts=args.prompts, mode="global" if args.global_only else "local+global",
                        batch_size=args.batch_size, device=args.device, num_workers=workers, scores=args.scores,
                        calibration=args.calibration, features=args.features)
    if args.resume:
        check_resume_identity(Path(args.output), run_identity(args, tagger), bool(done))
    if done:
        print(f"sigrl tag: resuming {args.output}: {len(done)} image(s) already there", file=sys.stderr)
    skipped = 0
    results: list[dict] = []
    if args.resume:
        fd = os.open(args.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if os.fstat(fd).st_size == 0 and args.format == "csv":
            _write_all(fd, csv_text([CSV_HEADER]).encode("utf-8"))

        def emit(text: str) -> None:  # one record, one write: appended whole or not at all
            _write_all(fd, text.encode("utf-8"))

        close, partial = (lambda: os.close(fd)), None
    else:
        # --output is written to OUTPUT.partial-<pid> and renamed over OUTPUT when every image
        # is done: a run that is killed leaves the previous OUTPUT untouched (and its rows so
        # far in the .partial file), and runs writing the same OUTPUT at once never interleave.
        partial = Path(f"{args.output}.partial-{os.getpid()}") if args.output else None
        try:
            out = open(partial, "w", encoding="utf-8", newline="") if partial else sys.stdout
        except OSError as err:
            raise UsageError(f"--output {args.output}: cannot write ({err.strerror or err})") from None

        def emit(text: str) -> None:
            out.write(text)
            out.flush()

        close = (lambda: out.close()) if out is not sys.stdout else (lambda: None)
        if args.format == "csv":
            emit(csv_text([CSV_HEADER]))
    try:
        for r in tagger.iter_tags(args.paths, top_k=args.top_k, threshold=args.threshold, thresholds=thresholds,
                                  progress=True, skip=(lambda name: shown(name) in done) if done else None):
            rec = record(r)
            if r.error:
                skipped += 1
                tqdm.write(f"sigrl tag: skipped {rec['image']}: {r.error}", file=sys.stderr)
                if args.format == "table":
                    continue
            if args.format == "json":
                results.append(rec)
            else:
                emit(encode(rec, args.format))
        if args.format == "json":
            emit(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    finally:
        close()
    if partial:
        os.replace(partial, args.output)
    if skipped:
        print(f"sigrl tag: {skipped} input(s) skipped", file=sys.stderr)
    return 1 if skipped else 0
