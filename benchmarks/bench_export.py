"""Image-tower CPU throughput: ONNX Runtime (sigrl export onnx) vs torch.

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py [--models tiny,ViT-B-16] [--images 64] [--batch-size 16] [--threads 1]

The tiny test model (64 px) and a ViT-B/16 with random weights (224 px; speed does not
depend on the weights). Same pixels through both; prints images/s and the largest
difference of their outputs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,ViT-B-16")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sigrl.backbones import load_backbone
    from sigrl.export import OnnxTowers, export_onnx

    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if name == "tiny":
                from conftest import save_tiny_clip

                cfg, w = save_tiny_clip(Path(tmp) / "m")
                bb = load_backbone(str(cfg), str(w))
            else:
                import open_clip
                from safetensors.torch import save_file

                model = open_clip.create_model(name, pretrained=None)
                w = Path(tmp) / "w.safetensors"
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(w))
                bb = load_backbone(name, str(w))
            export_onnx(bb, Path(tmp) / "onnx")
            towers = OnnxTowers(Path(tmp) / "onnx", threads=args.threads)
            size = bb.preprocess_config.image_size
            x = torch.randn(args.batch_size, 3, size, size)
            bb.encode_images(x), towers.encode_images(x.numpy())  # warm-up
            n = max(1, args.images // args.batch_size)
            t0 = time.perf_counter()
            for _ in range(n):
                g, l = bb.encode_images(x)
            t_torch = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(n):
                g2, l2 = towers.encode_images(x.numpy())
            t_ort = time.perf_counter() - t0
            diff = max(float((g - torch.from_numpy(g2)).abs().max()), float((l - torch.from_numpy(l2)).abs().max()))
            imgs = n * args.batch_size
            print(f"{name}: torch {imgs / t_torch:.1f} img/s, onnxruntime {imgs / t_ort:.1f} img/s "
                  f"({t_torch / t_ort:.2f}x), batch {args.batch_size}, {args.threads} thread(s), max diff {diff:.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
