"""Tagging throughput: `Tagger` end to end (read file, decode, preprocess, encode,
score) vs the raw backbone forward on ready tensors, for the shipped world model
(``world``), the tiny test model (``tiny``) and ViT-B-16 (random weights: no weights can be
downloaded here; speed does not depend on them).

    python benchmarks/bench_tag.py [--images 64] [--labels 100] [--batch-size 16]
        [--models world,tiny,ViT-B-16] [--onnx] [--json]

Prints images/s for both, the overhead of everything around the forward pass, and the
time of reading + decoding + preprocessing one image on its own (the main part of it).
``--onnx`` adds a row per model for ONNX Runtime: ``sigrl export onnx --labels`` of the
same labels, then ``OnnxTagger`` end to end vs image.onnx + scores.onnx on ready arrays
(needs ``sigrl[onnx]``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_images(directory: Path, n: int, size: int = 256) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(directory / f"{i:05d}.jpg", quality=90)


def time_tagging(tagger, image_dir: Path, n: int) -> float:
    """Seconds for ``tagger.tag`` over the folder (after a one-image warm-up)."""
    tagger.tag([image_dir / "00000.jpg"])
    t0 = time.perf_counter()
    results = tagger.tag([image_dir], top_k=5)
    seconds = time.perf_counter() - t0
    assert len(results) == n and not any(r.error for r in results)
    return seconds


def time_forward(forward, pixels, n: int, batch_size: int) -> float:
    """Seconds for ``forward(pixels)`` on ready tensors, once per batch of n images (after a warm-up)."""
    forward(pixels)
    t0 = time.perf_counter()
    for _ in range(0, n, batch_size):
        forward(pixels)
    return time.perf_counter() - t0


def bench(backbone, name: str, image_dir: Path, n: int, n_labels: int, batch_size: int, workers: int = 0) -> dict:
    from sigrl.tagging import Tagger

    labels = [f"label number {i}" for i in range(n_labels)]
    t_tag = time_tagging(Tagger(labels, backbone=backbone, batch_size=batch_size, num_workers=workers), image_dir, n)
    from sigrl.images import load_image

    files = sorted(image_dir.glob("*.jpg"))
    t0 = time.perf_counter()
    for f in files:  # what the tagger does around the model, per image
        backbone.preprocess(load_image(f))
    t_load = time.perf_counter() - t0
    size = backbone.preprocess_config.image_size
    t_fwd = time_forward(backbone.encode_images, torch.randn(batch_size, 3, size, size), n, batch_size)
    return {"model": name, "workers": workers, "images": n, "labels": n_labels, "batch_size": batch_size,
            "tag_images_per_s": n / t_tag, "forward_images_per_s": n / t_fwd,
            "overhead_pct": 100 * (t_tag - t_fwd) / t_fwd,
            "load_preprocess_ms_per_image": 1000 * t_load / len(files), "forward_ms_per_image": 1000 * t_fwd / n}


def bench_onnx(backbone, name: str, image_dir: Path, n: int, n_labels: int, batch_size: int, tmp: Path,
               threads: int, workers: int = 0) -> dict:
    from sigrl.export import OnnxTagger, export_onnx
    from sigrl.tagging import Tagger

    labels = [f"label number {i}" for i in range(n_labels)]
    out = tmp / f"onnx-{name}"
    export_onnx(backbone, out, tagger=Tagger(labels, backbone=backbone, batch_size=batch_size))
    tagger = OnnxTagger(out, batch_size=batch_size, threads=threads, num_workers=workers)
    t_tag = time_tagging(tagger, image_dir, n)
    size = backbone.preprocess_config.image_size
    pixels = np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype("float32")
    towers = tagger.towers
    t_fwd = time_forward(lambda x: towers.score_features(*towers.encode_images(x)), pixels, n, batch_size)
    return {"model": f"{name} onnx", "workers": workers, "images": n, "labels": n_labels, "batch_size": batch_size,
            "tag_images_per_s": n / t_tag, "forward_images_per_s": n / t_fwd,
            "overhead_pct": 100 * (t_tag - t_fwd) / t_fwd, "load_preprocess_ms_per_image": float("nan"),
            "forward_ms_per_image": 1000 * t_fwd / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--models", default="world,tiny,ViT-B-16")
    ap.add_argument("--onnx", action="store_true", help="also ONNX Runtime rows (sigrl[onnx])")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from conftest import save_tiny_clip

    from sigrl.backbones import load_backbone

    torch.set_num_threads(args.threads)  # conftest pins 1 thread for tests
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        make_images(tmp / "imgs", args.images)
        for name in args.models.split(","):
            if name == "tiny":
                cfg, w = save_tiny_clip(tmp / "tiny")
                bb = load_backbone(str(cfg), str(w))
            elif name == "world":
                bb = load_backbone("world", None)  # the shipped model (sigrl/world/model)
            else:
                bb = load_backbone(name, None)  # random weights
            rows.append(bench(bb, name, tmp / "imgs", args.images, args.labels, args.batch_size, args.workers))
            if args.onnx:
                rows.append(bench_onnx(bb, name, tmp / "imgs", args.images, args.labels, args.batch_size, tmp,
                                       args.threads, args.workers))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'model':<14} {'tag img/s':>10} {'forward img/s':>14} {'overhead':>9} {'load+prep ms/img':>17} "
          f"{'forward ms/img':>15}")
    for r in rows:
        print(f"{r['model']:<14} {r['tag_images_per_s']:>10.1f} {r['forward_images_per_s']:>14.1f} "
              f"{r['overhead_pct']:>8.1f}% {r['load_preprocess_ms_per_image']:>17.1f} {r['forward_ms_per_image']:>15.1f}")


if __name__ == "__main__":
    main()
