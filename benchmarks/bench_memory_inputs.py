"""Peak memory of tagging with thousands of labels (moved out of tests/test_hardening_inputs.py).

    python benchmarks/bench_memory_inputs.py [--labels 3000] [--images 40] [--batch-size 16]

Builds the tiny random open_clip model of the tests, writes ``--images`` small PNGs, and in a
fresh process: tags them once with 20 labels (warm-up: model, allocator and first batch
loaded), records the peak RSS, then builds a Tagger over ``--labels`` labels and tags the
images with the full distribution and with top-5. Prints the peak RSS before and after and
the growth in MB; for scale, the naive (labels x patches x width) float32 tensor of one
batch is printed beside it. The growth expected by design is a few MB (the label embedding
matrix and one (batch, labels) score block), not labels x patches x width.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from sigrl.tagging import Tagger
    from sigrl.backbones import load_backbone
    cfg, w, images, n_labels, batch = sys.argv[1:6]
    n_labels, batch = int(n_labels), int(batch)
    bb = load_backbone(cfg, w)
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Tagger([f"word{i}" for i in range(20)], backbone=bb, batch_size=batch).tag([images], top_k=3)
    before = peak()
    tagger = Tagger([f"label number {i} of many" for i in range(n_labels)], backbone=bb, batch_size=batch)
    full = tagger.tag([images], top_k=None)
    tagger.tag([images], top_k=5)
    print(json.dumps({"before": before, "after": peak(), "n": len(full),
                      "lens": sorted({len(r.tags) for r in full})}))
""")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, default=3000)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    from conftest import save_tiny_clip, write_shape_image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg, w = save_tiny_clip(tmp / "tiny")
        for i in range(args.images):
            write_shape_image(tmp / "imgs" / f"{i:03d}.png", seed=i)
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg), str(w), str(tmp / "imgs"),
                               str(args.labels), str(args.batch_size)], capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        cfg_json = json.loads(Path(cfg).read_text())
    vision = cfg_json.get("model_cfg", cfg_json).get("vision_cfg", {})
    width = vision.get("width")
    grid = (vision.get("image_size", 0) // vision.get("patch_size", 1)) ** 2 if vision.get("patch_size") else None
    print(f"tiny open_clip model, {args.images} images, {args.labels:,} labels, batch {args.batch_size}")
    print(f"tags per image (full distribution): {res['lens']}")
    print(f"peak RSS after warm-up (20 labels)   {res['before']:8.1f} MB")
    print(f"peak RSS after {args.labels:,} labels         {res['after']:8.1f} MB")
    print(f"growth                               {res['after'] - res['before']:8.1f} MB")
    if width and grid:
        naive = args.batch_size * args.labels * grid * width * 4 / 2**20
        print(f"for scale: one batch of labels x patches x width float32 = {naive:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
