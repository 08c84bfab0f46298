"""What the world model has learnt: probes, oracles and zero-shot matching on a world.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world.py                 # the shipped model, world seed 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world.py --seeds 0,1,2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world.py --model DIR/world.json --pretrained DIR/world.safetensors
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world.py --readouts     # + shape read out four ways

Reports :func:`sigrl.world.probe.model_report` (the world drawn in memory: 2,000 train
images for the probes' fit, 1,000 test images): linear probes for colour and shape on the
frozen global features (and on the patch tokens, mean- and max-pooled); unseen-label mAP
(their own pass) of CLIP matching with local + global, global alone and local alone,
against random scores, a colour oracle (perfect colour, no shape) and a shape oracle
(perfect shape, no colour) and a bag oracle (every colour and shape in the image, not which
goes with which). A model that beats the bag oracle on the unseen labels binds colour to
shape. The world is a functional and comparative
testbed, not a claim about real data.

Measured (shipped model v5, sha256 716e7368..., world seed 0, 1 thread): probes colour 0.999,
shape 0.910; unseen mAP local+global 0.341, global 0.319, local 0.420; random 0.085, colour
oracle 0.203, shape oracle 0.169, bag oracle 0.357 (perfect colour and shape on any
objects, no binding): local+global 1.68x the colour oracle, local alone 2.07x and 0.063
above the bag oracle, which only binding can pass. Probes on the patch tokens pooled: shape
0.910 (mean), 0.897 (max). Per shape: circle 0.925, square 0.929, triangle 0.942, star 0.799,
ring 0.988, cross 0.876. By size (ROC AUC of the shape probe, images holding the shape with
its largest instance in a third of the radius range, against images without it; radius <
11.5 / 11.5-15.4 / 15.4-19.3 px): circle 0.788 / 0.909 / 0.958, square 0.752 / 0.847 /
0.918, triangle 0.889 / 0.941 / 0.961, star 0.774 / 0.889 / 0.906, ring 0.983 / 0.990 /
0.990, cross 0.827 / 0.892 / 0.926. Read out other ways (``--readouts``, 8,000 probe
images): linear 0.910 (2,000 images) / 0.912 (8,000), compounds max over colours 0.915, MLP
0.947.

v4 (phase 1 alone, sha256 6f63f875...; ``--pretrained`` its weights from commit efe9e4d):
shape 0.932; unseen 0.202 / 0.196 / 0.326 (local 91 % of the bag oracle: no binding); by
size circle 0.853 / 0.925 / 0.973, triangle 0.854 / 0.937 / 0.951, star 0.838 / 0.930 /
0.938; readouts linear 0.932 / 0.934, compounds 0.924, MLP 0.951.

The same for v3 (the same recipe at 4,000 steps, sha256 b0921122...): shape 0.840 (circle
0.867, square 0.901, triangle 0.780, star 0.724, ring 0.948, cross 0.822); unseen 0.168 /
0.163 / 0.268; by size circle 0.711 / 0.832 / 0.894, square 0.704 / 0.794 / 0.861, triangle
0.790 / 0.790 / 0.793, star 0.766 / 0.826 / 0.855, ring 0.937 / 0.951 / 0.958, cross 0.799 /
0.837 / 0.869 (even large objects missed, triangles at every size: size was not the limit,
training time was); readouts linear 0.840 / 0.847, compounds 0.867, MLP 0.896.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="world")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--json", help="write the reports here")
    ap.add_argument("--readouts", action="store_true",
                    help="also read shape out of the global embedding four ways (8,000 probe images, about a minute)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from sigrl.backbones import load_backbone
    from sigrl.world.probe import model_report

    backbone = load_backbone(args.model, args.pretrained)
    reports = [model_report(backbone, seed=int(s), n_train=2000, n_test=1000) for s in args.seeds.split(",")]
    for r in reports:
        z = r["zsl"]
        print(f"world seed {r['world_seed']}: probes colour {r['probe']['colour']:.3f} shape {r['probe']['shape']:.3f}; "
              f"unseen mAP clip {z['clip_local+global']:.3f} (global {z['clip_global']:.3f}, local {z['clip_local']:.3f}), "
              f"random {z['random']:.3f}, colour oracle {z['colour_oracle']:.3f}, shape oracle {z['shape_oracle']:.3f}, "
              f"bag oracle (colour and shape, unbound) {z['bag_oracle']:.3f} "
              f"({r['unseen_over_colour_oracle']:.2f}x colour oracle); GZSL clip {r['gzsl_clip']:.3f}")
        print("  shape probe AP per shape: " + ", ".join(f"{k} {v:.3f}" for k, v in r["probe_shape_ap"].items()))
        print("  shape probe ROC AUC by the shape's largest radius in the image:")
        for shape, row in r["probe_shape_auc_by_size"].items():
            print(f"    {shape:9s}" + "  ".join(f"{b} {'-' if v is None else f'{v:.3f}'}" for b, v in row.items()))
        pp = r["probe_patches"]
        print("  probes on the patch tokens: " + ", ".join(
            f"{pool}-pooled colour {v['colour']:.3f} shape {v['shape']:.3f}" for pool, v in pp.items()))
        if args.readouts:
            from sigrl.world.probe import shape_readouts

            r["shape_readouts"] = shape_readouts(backbone, seed=r["world_seed"])
            print("  shape read out of the global embedding (test mAP): " + ", ".join(
                f"{k} {v:.3f}" for k, v in r["shape_readouts"].items() if k.startswith(("linear", "compound", "mlp"))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
