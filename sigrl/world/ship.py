"""The shipped world model: a tiny open_clip CLIP pre-trained once on the world's own
corpus (:func:`sigrl.world.generator.corpus_spec`, fixed seed) and stored in the package
(``sigrl/world/model/``: ``world.json`` open_clip config + preprocess_cfg,
``world.safetensors`` fp16 weights, ``manifest.json`` with the exact command, specs, seeds,
steps, loss curve, probe figures and the weights' sha256).

Reproduce it from scratch (CPU; ``sigrl world pretrain`` runs the same function)::

    OMP_NUM_THREADS=1 python -m sigrl.world.ship --out DIR

Training writes ``DIR/train.log`` (one line per 10 steps: step, loss, lr, seconds) and a
checkpoint every ``checkpoint_every`` steps (``DIR/checkpoints/step-NNNNNN.safetensors``), so
a partial model is usable. The corpus is drawn in memory (no PNG files).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from ..safeio import atomic_write_text
from .generator import GENERATOR_VERSION, World, corpus_spec, render_corpus

SHIPPED_DIR = Path(__file__).resolve().parent / "model"
ARCH_JSON = SHIPPED_DIR / "world-v2.json"
CONFIG_JSON = SHIPPED_DIR / "world.json"
WEIGHTS = SHIPPED_DIR / "world.safetensors"
MANIFEST = SHIPPED_DIR / "manifest.json"
SHORT_NAMES = ("world", "world-v2")


@dataclass(frozen=True)
class ShipSpec:
    """The shipped model's recipe (every field is recorded in the manifest).

    Phase 1 (contrastive): ``steps`` AdamW steps of ``batch_size`` corpus images and their
    captions, linear warm-up (``warmup``) then cosine decay to 0 over ``schedule_steps``.

    Phase 2 (binding, optional; ``twin_steps=0`` skips it): the weights rounded to fp16, a
    fresh AdamW, ``twin_steps`` steps whose batches are pairs: with probability
    ``twin_fraction`` a corpus image and its twin of kind ``twin_kind``
    (:func:`draw_twin_corpus`; "both": half *colour twins*, the same scene with the colours
    permuted among the objects, which only binding colour to shape tells apart, half *shape
    twins*, some objects given another shape), both captioned with every object's colour and
    shape; otherwise two corpus images with their own captions. Drawn from the first
    ``twin_images`` corpus images; lr warm-up over ``twin_warmup`` steps to ``twin_lr``,
    cosine to 0. The preprocessing (mean, std) stays phase 1's.

    The shipped model v5 is v4 (phase 1 alone: shape probe 0.932, unseen-label matching 0.20,
    the colour oracle's level: it did not bind) with this phase 2. Its settings were chosen on
    world seed 0 by ``benchmarks/bench_world_levers.py --init V4_WEIGHTS`` (the highest
    unseen-label matching with the shape probe at 0.9 or more; the table and the command that
    extracts v4's weights from git are in that script).
    """

    arch: str = str(ARCH_JSON.name)
    n_images: int = 100000
    steps: int = 10000
    schedule_steps: int = 10000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    checkpoint_every: int = 1000
    twin_steps: int = 1500
    twin_kind: str = "both"
    twin_images: int = 30000
    twin_fraction: float = 1.0
    twin_lr: float = 2e-3
    twin_warmup: int = 50

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ShipSpec":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown pre-training parameters: {', '.join(unknown)}")
        return cls(**d)


def arch_config(arch: str = ARCH_JSON.name) -> dict:
    path = Path(arch) if Path(arch).is_file() else SHIPPED_DIR / arch
    if not path.is_file():
        raise UsageError(f"unknown world model architecture {arch!r}")
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_paths() -> tuple[Path, Path]:
    """(config json, weights) of the model in the package; DataError when not shipped."""
    if not (CONFIG_JSON.is_file() and WEIGHTS.is_file()):
        raise DataError(f"{SHIPPED_DIR}: the shipped world model is missing (build it: sigrl world pretrain)")
    return CONFIG_JSON, WEIGHTS


def read_manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def draw_corpus(n: int, log=None, chunk: int = 2000):
    """(N, 3, H, W) uint8 tensor and N captions of the fixed pre-training corpus."""
    import torch

    spec = corpus_spec(n_pretrain=n)
    s = spec.image_size
    images = torch.empty((n, 3, s, s), dtype=torch.uint8)
    captions: list[str] = []
    t0 = time.perf_counter()
    for a in range(0, n, chunk):
        im, cap, _ = render_corpus(spec, a, min(a + chunk, n))
        images[a : a + len(im)] = torch.from_numpy(im).permute(0, 3, 1, 2)
        captions += cap
        if log:
            log(f"corpus {a + len(im)}/{n} images {time.perf_counter() - t0:.1f}s")
    return images, captions


def _lr_at(step: int, spec: ShipSpec) -> float:
    """Learning rate of (0-based) ``step`` over both phases: each a linear warm-up then a
    cosine decay to 0."""
    if step >= spec.steps:
        k = step - spec.steps
        return _warmup_cosine(k, spec.twin_lr, spec.twin_warmup, spec.twin_steps)
    return _warmup_cosine(step, spec.lr, spec.warmup, spec.schedule_steps)


def _warmup_cosine(k: int, lr: float, warmup: int, horizon: int) -> float:
    if k < warmup:
        return lr * (k + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (k - warmup) / max(1, horizon - warmup)))


def total_steps(spec: ShipSpec) -> int:
    return spec.steps + spec.twin_steps


def batch_indices(n_items: int, unit: int, batch_size: int, seed: int):
    """Endless index tensors (batch_size,) of whole units of ``unit`` consecutive items
    (a twin pair stays in one batch), in epochs of a permutation seeded by ``seed``."""
    import torch

    order = np.random.default_rng([seed, 11]).permutation
    n_units, per = n_items // unit, batch_size // unit
    perm, pos = order(n_units), 0
    while True:
        if pos + per > n_units:
            perm, pos = order(n_units), 0
        first_items = perm[pos : pos + per] * unit
        pos += per
        yield torch.from_numpy(np.stack([first_items + k for k in range(unit)], 1).ravel())


#: caption probabilities that name every object by colour and shape ("a red star and ...")
FULL_CAPTIONS = {"shape_only_captions": 0.0, "colour_only_captions": 0.0, "mixed_captions": 0.0}


def draw_twin_corpus(n: int, *, twin: str = "colour", fraction: float = 1.0):
    """The pairs of phase 2: (N, 3, H, W) uint8 images, N captions, N object lists, where
    for each pair (2m, 2m + 1) with probability ``fraction`` image 2m + 1 is a twin of corpus
    image 2m, otherwise both are corpus images with their own captions. ``twin``: "colour",
    "shape", or "both" (each pair's kind drawn at 1/2). Twin pairs are captioned with every
    object's colour and shape (a colour twin's shape-only or colour-only caption would be the
    same text), except with ``twin="shape"``, which keeps the corpus's caption mix.
    Deterministic in (n, twin, fraction)."""
    import torch

    if twin not in ("colour", "shape", "both"):
        raise UsageError(f"twin must be 'colour', 'shape' or 'both', got {twin!r}")
    plain = World(corpus_spec(n_pretrain=n))
    named = World(corpus_spec(n_pretrain=n, **(FULL_CAPTIONS if twin != "shape" else {})))
    paired = np.random.default_rng([plain.spec.seed, 13]).uniform(size=(n + 1) // 2) < fraction
    kinds = np.where(np.random.default_rng([plain.spec.seed, 17]).uniform(size=(n + 1) // 2) < 0.5, "colour", "shape")
    s = plain.spec.image_size
    images = torch.empty((n, 3, s, s), dtype=torch.uint8)
    captions, objects = [], []
    for i in range(n):
        pair = bool(paired[i // 2])
        kind = str(kinds[i // 2]) if twin == "both" else twin
        sample = plain.sample("pretrain", i - i % 2 if pair else i, twin=kind if pair and i % 2 else None)
        images[i] = torch.from_numpy(sample.image).permute(2, 0, 1)
        cap_rng = np.random.default_rng([plain.spec.seed, 7_000_001, i])
        captions.append((named if pair else plain).caption(sample.objects, cap_rng))
        objects.append(sample.objects)
    return images, captions, objects


def _save_weights(model, path: Path, fp16: bool = True) -> None:
    from safetensors.torch import save_file

    state = {k: (v.detach().half() if fp16 and v.is_floating_point() else v.detach()).contiguous().clone()
             for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def train_world_model(out: str | os.PathLike, spec: ShipSpec = ShipSpec(), *, max_steps: int | None = None,
                      threads: int = 1, quiet: bool = False, resume_phase2: str | None = None) -> dict:
    """Pre-train the world model into ``out`` (train.log, checkpoints/, world.json,
    world.safetensors, train.json). ``max_steps`` stops early (same schedule: a shortened
    rerun's loss curve is comparable step by step with the recorded one).
    ``resume_phase2``: a phase-1 checkpoint (step ``spec.steps``, in a run folder whose
    ``train.log`` holds phase 1's losses) to run phase 2 from; the result is the same as a
    run from scratch (phase 2 starts from fp16-rounded weights and its own batch order)."""
    import open_clip
    import torch

    from .pretrain import _cut, _param_groups, _adamw, channel_stats, contrastive_step, encode_text_cut, get_tokenizer

    out = Path(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "a", encoding="utf-8")

    def log(msg: str) -> None:
        logf.write(msg + "\n")
        logf.flush()
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cfg = arch_config(spec.arch)
    context = int(cfg["text_cfg"]["context_length"])
    images, captions = draw_corpus(spec.n_images, log)
    mean, std = channel_stats(images)
    tokenize = lambda texts: get_tokenizer()(texts, context_length=context)  # noqa: E731
    tokens = tokenize(captions)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(spec.seed)
    model = open_clip.CLIP(**cfg)
    model.train()
    opt = _adamw(_param_groups(model, spec.weight_decay), spec.lr)
    loss_fn = open_clip.ClipLoss()
    stop = total_steps(spec) if max_steps is None else min(max_steps, total_steps(spec))
    first = 0
    losses: list[float] = []
    if resume_phase2:
        from safetensors.torch import load_file

        ckpt = Path(resume_phase2)
        while not ckpt.is_file():  # phase 1 still running: prepared, wait for its checkpoint
            time.sleep(5)
        time.sleep(2)
        model.load_state_dict({k: v.float() for k, v in load_file(str(ckpt)).items()})
        first = spec.steps
        for line in (ckpt.parent.parent / "train.log").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["step"] and int(parts[1]) <= first:
                losses += [float(parts[3])] * 10  # the log keeps 10-step means
        losses = losses[:first]
    preprocess_cfg = {"size": int(cfg["vision_cfg"]["image_size"]), "mean": [round(m, 6) for m in mean],
                      "std": [round(s, 6) for s in std], "interpolation": "bicubic", "resize_mode": "shortest"}
    atomic_write_text(out / "world.json", json.dumps({**cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n")
    log(f"start steps={total_steps(spec)} batch={spec.batch_size} from={first} setup={time.perf_counter() - t0:.1f}s")
    t_train = time.perf_counter()

    feed = batch_indices(len(captions), 1, spec.batch_size, spec.seed)
    for step in range(first, stop):
        if step == spec.steps:  # phase 2: fp16-rounded weights, a fresh optimiser, the twin pairs
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.half().float())
            opt = _adamw(_param_groups(model, spec.weight_decay), _lr_at(step, spec))
            images, captions, _ = draw_twin_corpus(spec.twin_images, twin=spec.twin_kind, fraction=spec.twin_fraction)
            tokens = tokenize(captions)
            feed = batch_indices(len(captions), 2, spec.batch_size, spec.seed)
            log(f"phase 2 (binding: {spec.twin_kind} twins) from step {step}, {spec.twin_images} images")
        idx = next(feed)
        x = (images[idx].float().div_(255.0) - mean_t) / std_t
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec)
        img_f = model.encode_image(x, normalize=True)
        txt_f = encode_text_cut(model, _cut(tokens[idx]))
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        losses.append(contrastive_step(model, opt, loss))
        if (step + 1) % 10 == 0:
            log(f"step {step + 1} loss {np.mean(losses[-10:]):.4f} lr {_lr_at(step, spec):.2e} "
                f"t {time.perf_counter() - t_train:.1f}")
        if (step + 1) % spec.checkpoint_every == 0 or step + 1 in (stop, spec.steps):
            model.eval()
            _save_weights(model, out / "checkpoints" / f"step-{step + 1:06d}.safetensors")
            model.train()
    model.eval()
    _save_weights(model, out / "world.safetensors")
    info = {
        "spec": spec.to_dict(),
        "generator_version": GENERATOR_VERSION,
        "corpus_seed": corpus_spec().seed,
        "steps_done": stop,
        "resumed_phase2_from": resume_phase2,
        "losses": [round(l, 5) for l in losses],
        "final_loss": round(float(np.mean(losses[-20:])), 5),
        "train_seconds": round(time.perf_counter() - t_train, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": threads,
    }
    atomic_write_text(out / "train.json", json.dumps(info) + "\n")
    log(f"done final_loss {info['final_loss']} seconds {info['seconds']}")
    logf.close()
    return info


def write_manifest(run_dir: str | os.PathLike, *, command: str, report: dict | None = None,
                   dest: str | os.PathLike = SHIPPED_DIR) -> dict:
    """Copy a finished run's ``world.json`` + ``world.safetensors`` into ``dest`` (the
    package's model folder by default) and write ``manifest.json`` beside them."""
    import shutil

    run = Path(run_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    info = json.loads((run / "train.json").read_text(encoding="utf-8"))
    if dest.resolve() != run.resolve():
        shutil.copyfile(run / "world.json", dest / "world.json")
        shutil.copyfile(run / "world.safetensors", dest / "world.safetensors")
    cfg = json.loads((dest / "world.json").read_text(encoding="utf-8"))
    losses = info["losses"]
    manifest = {
        "name": "world",
        "format": "open_clip CLIP (custom config), safetensors fp16",
        "config": "world.json",
        "weights": "world.safetensors",
        "sha256": sha256_file(dest / "world.safetensors"),
        "bytes": (dest / "world.safetensors").stat().st_size,
        "command": command,
        "spec": info["spec"],
        "model_cfg": {k: v for k, v in cfg.items() if k != "preprocess_cfg"},
        "preprocess_cfg": cfg.get("preprocess_cfg"),
        "tokenizer": "open_clip SimpleTokenizer (bundled BPE, vocabulary 49408)",
        "corpus": {"generator_version": info["generator_version"], "corpus_seed": info["corpus_seed"],
                   "n_images": info["spec"]["n_images"], "in_memory": True},
        "seeds": {"init_and_batch_order": info["spec"]["seed"], "corpus": info["corpus_seed"]},
        "steps": info["steps_done"],
        "final_loss": info["final_loss"],
        "loss_every_10": [round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, len(losses), 10)],
        "train_seconds": info["train_seconds"],
        "threads": info.get("threads"),
        "report": report,
    }
    atomic_write_text(dest / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sigrl.world.ship", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (same schedule)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume-phase2", metavar="CHECKPOINT", help="run phase 2 from this phase-1 checkpoint")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ShipSpec field")
    args = ap.parse_args(argv)
    fields_ = {f.name: f.type for f in fields(ShipSpec)}
    over = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in fields_:
            raise SystemExit(f"unknown field {k}")
        over[k] = v if k in ("arch", "twin_kind") else (float(v) if "." in v or "e" in v else int(v))
    train_world_model(args.out, ShipSpec(**over), max_steps=args.steps, threads=args.threads,
                      resume_phase2=args.resume_phase2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
