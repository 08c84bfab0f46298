"""Re-tagging from stored features vs the first run (`sigrl tag --features DIR`).

    OMP_NUM_THREADS=1 python benchmarks/bench_retag.py [--images 2000] [--labels 48] [--workers 0]

On the embedded world's test images with the shipped tiny world model (both built on
first use): run 1 tags every image with the world's labels and fills an empty feature
store (read, hash, decode, preprocess, encode, store, score); run 2 tags the same images
with a new label set (the labels in reverse order plus 16 new words) from the store
(read, hash, look up, score). Start-up (model and label loading, the store's open) is
outside the timers. Prints both times, the speed-up, and the largest difference of a
label's score between the runs (same features: 0 up to float rounding).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--world", help="world root (default: the seed-0 world, built on first use)")
    ap.add_argument("--model", nargs=2, metavar=("CONFIG", "WEIGHTS"), help="default: the shipped tiny world model")
    ap.add_argument("--random-model", metavar="NAME", help="an open_clip model with random weights instead "
                    "(e.g. ViT-B-16: the world images are resized to its 224 px)")
    args = ap.parse_args()
    from sigrl.backbones import load_backbone
    from sigrl.tagging import Tagger
    from sigrl.world import WorldSpec, ensure_world
    from sigrl.world.ship import shipped_paths

    root = Path(args.world) if args.world else ensure_world(WorldSpec(seed=0))
    tmp_weights = None
    if args.random_model:
        import open_clip
        from safetensors.torch import save_file

        tmp_weights = tempfile.TemporaryDirectory()
        weights = Path(tmp_weights.name) / "random.safetensors"
        model = open_clip.create_model(args.random_model, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        backbone = load_backbone(args.random_model, str(weights))
    else:
        cfg, weights = args.model or shipped_paths()  # the world model shipped in the package
        backbone = load_backbone(str(cfg), str(weights))
    labels = (root / "labels.txt").read_text().split("\n")
    labels = [l for l in labels if l]
    images = sorted((root / "images" / "test").glob("*.png"))[: args.images]
    new_labels = labels[::-1] + [f"new word {i}" for i in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "feats"
        t1 = Tagger(labels, backbone=backbone, features=store, batch_size=args.batch_size, num_workers=args.workers)
        t0 = time.perf_counter()
        first = t1.tag(images, top_k=0)
        first_s = time.perf_counter() - t0
        t2 = Tagger(new_labels, backbone=backbone, features=store, batch_size=args.batch_size,
                    num_workers=args.workers)
        t0 = time.perf_counter()
        second = t2.tag(images, top_k=0)
        second_s = time.perf_counter() - t0
    assert len(first) == len(second) == len(images) and not any(r.error for r in first + second)
    diff = max(abs(dict(a.tags)[l] - dict(b.tags)[l]) for a, b in zip(first, second) for l in labels)
    print(f"model {args.random_model or 'tiny world model'}, images {len(images)}, labels {len(labels)} then {len(new_labels)}, batch {args.batch_size}, "
          f"workers {args.workers}")
    print(f"first run (decode + encode + store): {first_s:.2f} s ({len(images) / first_s:.0f} img/s)")
    print(f"re-tag from stored features:         {second_s:.2f} s ({len(images) / second_s:.0f} img/s)")
    print(f"speed-up {first_s / second_s:.1f}x; largest score difference of a shared label {diff:.2e}")


if __name__ == "__main__":
    main()
