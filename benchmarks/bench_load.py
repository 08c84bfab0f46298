"""Load: tag thousands of image files with a thousand labels, through the Python API and
through the command line, and show that memory does not grow with the number of images.

    python benchmarks/bench_load.py [--images 2000] [--small 500] [--labels 1000] [--threads 2] [--json]

Writes small JPEGs (96x96, a coloured shape on noise) to a temporary folder, saves the
tiny open_clip model of tests/conftest.py (random weights: speed and memory do not
depend on them), and runs four fresh processes, each measured on its own with
``os.wait4`` (peak resident set size of exactly that process):

* ``api``  -- ``Tagger(labels).iter_tags(folder, top_k=5)``, results consumed as they come;
* ``cli``  -- ``sigrl tag FOLDER --labels-file L --format csv --output out.csv``;

each for ``--small`` images and for ``--images`` images. Prints throughput (images/s of
the tagging loop for the API; whole command including start-up for the CLI) and peak
RSS, and checks the outputs (every image tagged, 5 tags each). Memory is bounded when the
peak RSS for N images is about the one for N/4 (the script prints the ratio).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_images(directory: Path, n: int, size: int = 96) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.fromarray((rng.random((size, size, 3)) * 80 + 90).astype(np.uint8))
        box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        ImageDraw.Draw(img).rectangle((box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4),
                                      fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        img.save(directory / f"{i:05d}.jpg", quality=85)


def measure(cmd: list[str], env: dict) -> tuple[int, float, float, str]:
    """Run ``cmd``; (exit code, wall seconds, peak RSS MiB of that process, stdout)."""
    out = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    return proc.returncode, wall, usage.ru_maxrss / 1024, out.read().decode()


def api_worker(args) -> None:
    """Child process: tag a folder through the API, print one JSON line."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from sigrl.tagging import Tagger

    labels = Path(args.labels_file).read_text(encoding="utf-8").splitlines()
    t0 = time.perf_counter()
    tagger = Tagger(labels, model=args.model, pretrained=args.pretrained, batch_size=args.batch_size)
    t_load = time.perf_counter() - t0
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = tagged = five = 0
    t0 = time.perf_counter()
    for r in tagger.iter_tags([args.folder], top_k=5):
        n += 1
        tagged += r.error is None
        five += len(r.tags) == 5
    t_tag = time.perf_counter() - t0
    print(json.dumps({"images": n, "tagged": tagged, "with_5_tags": five, "load_s": t_load, "tag_s": t_tag,
                      "rss_after_load_mib": rss_ready}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=["api"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--labels-file", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--pretrained", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return api_worker(args)

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import save_tiny_clip

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg, weights = save_tiny_clip(tmp / "model")
        t0 = time.perf_counter()
        make_images(tmp / "all", args.images)
        (tmp / "small").mkdir()
        for p in sorted((tmp / "all").iterdir())[: args.small]:
            os.symlink(p, tmp / "small" / p.name)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        labels_file = tmp / "labels.txt"
        labels_file.write_text("".join(f"label number {i} of the vocabulary\n" for i in range(args.labels)))
        for folder, n in (("small", args.small), ("all", args.images)):
            code, wall, rss, out = measure(
                [sys.executable, __file__, "--worker", "api", "--folder", str(tmp / folder), "--labels-file",
                 str(labels_file), "--model", str(cfg), "--pretrained", str(weights), "--threads",
                 str(args.threads), "--batch-size", str(args.batch_size)], env)
            res = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
            ok = code == 0 and res["images"] == res["tagged"] == res["with_5_tags"] == n
            rows.append({"path": "api", "images": n, "labels": args.labels, "exit": code, "ok": ok,
                         "images_per_s": n / res["tag_s"] if res else None, "wall_s": wall,
                         "peak_rss_mib": rss, "rss_after_model_load_mib": res.get("rss_after_load_mib")})
            print(rows[-1], file=sys.stderr)
            out_csv = tmp / f"out_{folder}.csv"
            code, wall, rss, _ = measure(
                [sys.executable, "-m", "sigrl", "tag", str(tmp / folder), "--labels-file", str(labels_file),
                 "--model", str(cfg), "--pretrained", str(weights), "--format", "csv", "--output", str(out_csv),
                 "--top-k", "5", "--batch-size", str(args.batch_size)], env)
            ok = False
            if code == 0 and out_csv.is_file():
                with open(out_csv, newline="", encoding="utf-8") as fh:
                    table = list(csv.DictReader(fh))
                ok = len(table) == 5 * n and len({r["image"] for r in table}) == n
            rows.append({"path": "cli", "images": n, "labels": args.labels, "exit": code, "ok": ok,
                         "images_per_s": n / wall, "wall_s": wall, "peak_rss_mib": rss})
            print(rows[-1], file=sys.stderr)

    by = {(r["path"], r["images"]): r for r in rows}
    ratios = {p: by[(p, args.images)]["peak_rss_mib"] / by[(p, args.small)]["peak_rss_mib"] for p in ("api", "cli")}
    summary = {"rows": rows, "peak_rss_ratio_large_over_small": ratios,
               "memory_bounded": all(r < 1.15 for r in ratios.values()), "all_ok": all(r["ok"] for r in rows),
               "threads": args.threads, "batch_size": args.batch_size}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'path':5} {'images':>7} {'labels':>7} {'ok':>5} {'img/s':>8} {'wall s':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['path']:5} {r['images']:>7} {r['labels']:>7} {str(r['ok']):>5} {r['images_per_s']:>8.1f} "
              f"{r['wall_s']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    print("api img/s: tagging loop only (model loaded); cli img/s: whole command incl. start-up and model load")
    for p, ratio in ratios.items():
        print(f"{p}: peak RSS {args.images} images / {args.small} images = {ratio:.3f}")
    print("memory bounded (ratio < 1.15):", summary["memory_bounded"], "| all outputs complete:", summary["all_ok"])


if __name__ == "__main__":
    main()
