"""Which pre-training lever teaches the world model shape, and binding? Short runs, one probe each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_levers.py               # every variant, 2 at a time
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_levers.py --only base,supervised --steps 500
    git show efe9e4d:sigrl/world/model/world.safetensors > v4.safetensors            # the model before binding
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_levers.py --init v4.safetensors \
        --only colour_twins,both_twins --steps 1500 --lr 2e-3

Every variant trains the shipped model's architecture (``sigrl/world/model/world-v2.json``)
from scratch (``--init scratch``) or from a weights file (``--init shipped`` or a path) for
``--steps`` steps of 128 (lr ``--lr``, default the shipped recipe's 2e-3, warm-up 50, cosine
to 0 over the run) on the first 30,000 images of the shipped model's pre-training corpus
(:func:`sigrl.world.generator.render_corpus`), then reports :func:`sigrl.world.probe.model_report`
on world seed 0 (2,000 train images for the probes' fit, 1,000 test images): the linear
probes for colour and shape on the global embedding and the unseen-label mAP of CLIP
matching. The variants:

    base            the shipped recipe (CLIP contrastive loss on the corpus captions)
    layers6         6 vision layers instead of 3
    patch8          patch 8 (144 tokens) instead of 12 (64)
    shape_captions  60 % of the captions name shapes only (the corpus has 30 %)
    full_captions   every caption names every object's colour and shape
    shape_twins     every batch is 64 pairs: an image and its shape twin (same scene, colours,
                    places and sizes, 1+ objects given another shape: World.sample(twin="shape")),
                    hard negatives that only shape tells apart
    colour_twins    every batch is 64 pairs: an image and its colour twin (the colours permuted
                    among the objects: World.sample(twin="colour")), captioned with every
                    object's colour and shape: hard negatives that only binding tells apart
    colour_twins_half   half the pairs colour twins, half two corpus images with their captions
    both_twins      half the pairs colour twins, half shape twins, all with full captions
                    (the shipped recipe's phase 2: sigrl.world.ship.draw_twin_corpus)
    supervised      the ceiling of the tower at this budget: no text, a linear layer on the
                    normalised embedding trained with BCE on which colours and which shapes
                    the image holds (the probe's own targets, from the corpus's objects)
    supervised_patch8   the same ceiling for the patch-8 tower

Shape, measured 2026-12-05, from scratch, 500 steps, 2 variants at a time on 2 cores (train
seconds with up to four processes sharing the cores; world seed 0; unseen mAP: CLIP
local+global matching on the 12 unseen labels, colour oracle 0.203):

    variant         shape probe  colour probe  unseen mAP  local   loss
    base                  0.740         0.994       0.175  0.191  1.734
    layers6               0.744         0.996       0.168  0.184  1.701
    patch8                0.746         0.998       0.160  0.172  1.671
    shape_captions        0.748         0.986       0.153  0.185  2.536
    shape_twins           0.738         0.991       0.187  0.194  2.408
    supervised            0.723         0.997       (no text tower)   0.226 (BCE)

Every lever lands within 0.01 of the base on the shape probe, and the tower trained on the
shape labels themselves lands there too: at this budget the vision tower's speed at
learning shape, not the contrastive objective or its captions, sets the probe. The shape
twins lift unseen-label matching a little (0.187 vs 0.175) without moving the probe. The
shipped model v3 (the base recipe for 4,000 steps on 100,000 images) had shape 0.840, and
v4 (the same for 10,000 steps) 0.932: time was the lever. The
supervised tower at that budget (``--only supervised --steps 4000 --images 100000``, 1,889 s
of training at one thread) reaches 0.861 (colour 1.000). At 1,500 steps
(``--only supervised_patch8,supervised --steps 1500``): 0.776 with patch 12, 0.789 with
patch 8 (1,814 s of training at one thread, 2.2x the patch-12 time a step).

Binding, measured 2026-12-05: v4 fine-tuned 1,500 steps (``--init`` v4's weights; about 900 s
of training at one thread, two variants at a time). v4 itself: shape 0.932, unseen 0.202,
local 0.326; bag oracle (every colour and shape present, unbound) 0.357, 2x the colour
oracle 0.406:

    variant            lr    shape probe  colour probe  unseen mAP  local   loss
    base               5e-4        0.934         1.000       0.201  0.316  0.195
    colour_twins       5e-4        0.909         0.999       0.290  0.382  0.124
    colour_twins       1e-3        0.901         0.999       0.340  0.415  0.116
    colour_twins_half  1e-3        0.936         0.999       0.213  0.348  0.310
    both_twins         1e-3        0.924         0.999       0.327  0.412  0.075
    both_twins         2e-3        0.908         0.999       0.349  0.432  0.077

More training on the corpus changes nothing (base); colour twins teach binding (unseen
matching +0.14, local matching above the bag oracle, which no unbound model can pass) at a
small cost in the shape probe, which the shape twins in ``both_twins`` partly pay back;
diluting the twins with ordinary pairs (``colour_twins_half``) loses most of the gain. The
shipped v5 is v4 + ``both_twins`` at 2e-3 (the highest unseen mAP with the shape probe at
0.9 or more). The world is a functional and comparative testbed, not a claim about real data.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("base", "layers6", "patch8", "shape_captions", "shape_twins", "supervised", "supervised_patch8",
            "full_captions", "colour_twins", "colour_twins_half", "both_twins")
TWINS = {"shape_twins": "shape", "colour_twins": "colour", "colour_twins_half": "colour", "both_twins": "both"}
ARCH = {"layers6": {"layers": 6}, "patch8": {"patch_size": 8}, "supervised_patch8": {"patch_size": 8}}
N_IMAGES = 30000
BATCH = 128


def corpus(variant: str, n: int):
    """(N, 3, H, W) uint8 images, N captions, N object lists of the variant's corpus."""
    import torch

    from sigrl.world.generator import corpus_spec, render_corpus
    from sigrl.world.ship import FULL_CAPTIONS, draw_twin_corpus

    if variant in TWINS:  # the shipped recipe's phase 2 draws its pairs with the same function
        return draw_twin_corpus(n, twin=TWINS[variant], fraction=0.5 if variant == "colour_twins_half" else 1.0)
    captions = {"shape_captions": {"shape_only_captions": 0.6}, "full_captions": FULL_CAPTIONS}.get(variant, {})
    im, caps, objs = render_corpus(corpus_spec(n_pretrain=n, **captions), 0, n)
    return torch.from_numpy(im).permute(0, 3, 1, 2).contiguous(), caps, objs


def train_variant(variant: str, steps: int, out: Path, n_images: int = N_IMAGES, init: str = "scratch",
                  lr: float | None = None) -> dict:
    import numpy as np
    import open_clip
    import torch
    import torch.nn.functional as F

    from sigrl.backbones import load_backbone
    from sigrl.world.generator import World, corpus_spec
    from sigrl.world.pretrain import (_adamw, _cut, _param_groups, channel_stats, contrastive_step, encode_text_cut,
                                      get_tokenizer)
    from sigrl.world.probe import model_report
    from sigrl.world.ship import ShipSpec, _lr_at, _save_weights, arch_config, batch_indices

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = copy.deepcopy(arch_config())
    cfg["vision_cfg"].update(ARCH.get(variant, {}))
    images, captions, objects = corpus(variant, n_images)
    mean, std = channel_stats(images)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    spec = ShipSpec(steps=steps, schedule_steps=steps, warmup=50, batch_size=BATCH, twin_steps=0,
                    **({"lr": lr} if lr else {}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    if init != "scratch":  # fine-tune a model of this architecture (the shipped one's preprocessing)
        from safetensors.torch import load_file

        from sigrl.world.ship import read_manifest, shipped_paths

        weights = shipped_paths()[1] if init == "shipped" else Path(init)
        model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
        shipped = read_manifest()["preprocess_cfg"]
        mean, std = shipped["mean"], shipped["std"]
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    model.train()
    groups = _param_groups(model, spec.weight_decay)
    if variant.startswith("supervised"):
        world = World(corpus_spec())
        nc = len(world.colours)
        y = torch.zeros((len(objects), nc + len(world.shapes)))
        for i, obj in enumerate(objects):
            y[i, world.colour_of[obj]] = 1
            y[i, nc + world.shape_of[obj]] = 1
        probe = torch.nn.Linear(cfg["embed_dim"], y.shape[1])
        groups.append({"params": list(probe.parameters()), "weight_decay": 0.0})
    else:
        tokens = get_tokenizer()(captions, context_length=int(cfg["text_cfg"]["context_length"]))
        loss_fn = open_clip.ClipLoss()
    opt = _adamw(groups, spec.lr)
    feed = batch_indices(n_images, 2 if variant in TWINS else 1, BATCH, spec.seed)  # twins stay together
    losses = []
    for step in range(steps):
        idx = next(feed)
        x = (images[idx].float().div_(255.0) - mean_t) / std_t
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec)
        img_f = model.encode_image(x, normalize=True)
        if variant.startswith("supervised"):
            loss = F.binary_cross_entropy_with_logits(probe(10.0 * img_f), y[idx])
        else:
            loss = loss_fn(img_f, encode_text_cut(model, _cut(tokens[idx])), model.logit_scale.exp())
        losses.append(contrastive_step(model, opt, loss))
    train_s = time.perf_counter() - t0
    model.eval()
    preprocess = {"size": int(cfg["vision_cfg"]["image_size"]), "mean": mean, "std": std,
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "world.json").write_text(json.dumps({**cfg, "preprocess_cfg": preprocess}))
    _save_weights(model, out / "world.safetensors")
    report = model_report(load_backbone(str(out / "world.json"), str(out / "world.safetensors")),
                          seed=0, n_train=2000, n_test=1000)
    res = {"variant": variant, "init": init, "lr": spec.lr, "steps": steps, "final_loss": round(float(np.mean(losses[-20:])), 4),
           "train_seconds": round(train_s, 1), "probe": report["probe"],
           "unseen_clip": report["zsl"]["clip_local+global"], "unseen_local": report["zsl"]["clip_local"],
           "colour_oracle": report["zsl"]["colour_oracle"], "bag_oracle": report["zsl"]["bag_oracle"]}
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated variants (default all: {','.join(VARIANTS)})")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--output", default="bench-world-levers")
    ap.add_argument("--images", type=int, default=N_IMAGES, help="corpus images (default 30,000)")
    ap.add_argument("--jobs", type=int, default=2, help="variants run at once, one thread each")
    ap.add_argument("--init", default="scratch",
                    help="scratch (random weights, default), shipped (fine-tune the shipped model) or a "
                         ".safetensors file of this architecture")
    ap.add_argument("--lr", type=float, help="peak lr (default the shipped recipe's 2e-3)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # one variant in this process (a worker)
    args = ap.parse_args(argv)
    out = Path(args.output)
    if args.variant:
        print(json.dumps(train_variant(args.variant, args.steps, out / args.variant, args.images, args.init,
                                       args.lr)), flush=True)
        return 0
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    pending, running, results = list(names), [], {}
    while pending or running:
        while pending and len(running) < args.jobs:
            v = pending.pop(0)
            cmd = [sys.executable, __file__, "--variant", v, "--steps", str(args.steps), "--images", str(args.images),
                   "--output", str(out), "--init", args.init] + (["--lr", str(args.lr)] if args.lr else [])
            running.append((v, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
            print(f"started {v}", file=sys.stderr, flush=True)
        time.sleep(2)
        for v, p in list(running):
            if p.poll() is not None:
                running.remove((v, p))
                if p.returncode:
                    print(f"{v}: failed (exit {p.returncode})", file=sys.stderr)
                    continue
                results[v] = json.loads(p.stdout.read().strip().splitlines()[-1])
                print(f"done {v}", file=sys.stderr, flush=True)
    first = next(iter(results.values()), None)
    print(f"{'variant':<15} {'shape probe':>11} {'colour probe':>12} {'unseen mAP':>10} {'local':>6} "
          f"{'loss':>6} {'train s':>7}   ({args.init}, steps {args.steps}; on the unseen labels colour oracle "
          f"{first['colour_oracle']:.3f}, bag oracle {first['bag_oracle']:.3f})" if first else "no results")
    for v in names:
        r = results.get(v)
        if r:
            print(f"{v:<15} {r['probe']['shape']:>11.3f} {r['probe']['colour']:>12.3f} {r['unseen_clip']:>10.3f} "
                  f"{r['unseen_local']:>6.3f} {r['final_loss']:>6.3f} {r['train_seconds']:>7.0f}")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if len(results) == len(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
