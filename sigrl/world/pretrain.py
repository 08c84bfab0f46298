"""Contrastive pre-training of the embedded world's tiny vision-language model.

An open_clip custom architecture (a JSON config in ``sigrl/model_configs/``, open_clip's
format) is trained from scratch on the world's captions with open_clip's ``ClipLoss``,
AdamW, linear warm-up then cosine decay, and open_clip's bundled BPE tokenizer
(vocabulary 49408), so the result loads through the normal open_clip path.

The bundled ``world-tiny`` config (64 px, patch 16, vision width 128 x 4 layers with
average pooling of the patch tokens, text width 128 x 2 layers, context 32, embed 128)
and the default spec (1000 steps of 128, lr 2e-3) were chosen by measurement on 2 CPU
cores (benchmarks/bench_world.py): at equal compute, patch 16 learnt shape better than
patch 8 (about 3.5x more steps), average pooling made the patch tokens as good as the
global embedding for matching (the class token left them at 0.13 vs 0.18 unseen mAP),
lr 4e-3, batch 64 and the hard-negative term did not help. About 0.22 s a step on 2
idle cores; 1000 steps plus loading the images take about 4.5 minutes.

Saved by :func:`ensure_tiny_vlp` into ``cache_dir()/vlp-<hash>/`` (written to a temporary
directory, renamed into place when complete; reused when present)::

    model.json              open_clip model config + "preprocess_cfg" (mean, std, ...)
    model.safetensors       the CLIP state_dict
    open_clip_config.json   {"model_cfg": ..., "preprocess_cfg": ...} (open_clip local-dir)
    train.json              the training spec, the world fingerprint, losses, timings

Loading it back (either recipe gives the same model)::

    import json, open_clip, safetensors.torch
    cfg = json.load(open(config_path))
    preprocess_cfg = cfg.pop("preprocess_cfg")            # mean, std, size, ...
    model = open_clip.CLIP(**cfg)
    model.load_state_dict(safetensors.torch.load_file(weights_path))
    model.eval()
    # or: model = open_clip.create_model(f"local-dir:{config_path.parent}")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")        # the bundled BPE tokenizer;
    tokens = tokenizer(texts, context_length=cfg["text_cfg"]["context_length"])

Preprocessing: the world's images are drawn at the model's input size, so an image
becomes a tensor by ``to_tensor`` then ``(x - mean) / std`` with the per-channel mean and
std of the pre-training images (stored in ``preprocess_cfg``); no resize, no crop.
Local tokens: set ``model.visual.output_tokens = True``; ``model.visual(x)`` then returns
``(pooled (B, D), tokens (B, P, W))`` with tokens layer-normed but not projected, and
``tokens @ model.visual.proj`` puts them in the joint space (B, P, D).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError, UsageError
from ..paths import cache_dir
from ..safeio import atomic_write_text

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
TOKENIZER_NAME = "ViT-B-32"  # any name whose tokenizer is open_clip's bundled BPE (49408)
PRETRAIN_VERSION = 3  # part of every checkpoint's hash: bump when training changes


@dataclass(frozen=True)
class PretrainSpec:
    """How the tiny model is trained.

    Attributes:
        model: a config name in ``sigrl/model_configs`` (without ``.json``) or a path.
        steps: optimiser steps; batch_size: image-caption pairs per step.
        lr, warmup, weight_decay: AdamW with linear warm-up then cosine decay to 0.
        seed: initialisation and batch order.
        threads: torch CPU threads while training.
        max_images: use at most this many captioned images (0 = all).
        hard_negatives: weight of the hard-negative term (0 = open_clip's ClipLoss
            alone). Each caption gets a perturbed twin that names a different shape or
            swaps the shapes of two objects ("a red star and a blue ring" -> "a red ring
            and a blue star"); the term is the cross-entropy of picking the true caption
            over its twin, so colour alone cannot solve it (NegCLIP-style).
    """

    model: str = "world-tiny"
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 2
    max_images: int = 0
    hard_negatives: float = 0.0

    @classmethod
    def quick(cls, seed: int = 0, **overrides) -> "PretrainSpec":
        """A few-second run (tests, ``--quick`` demos): the loss falls, little is learnt."""
        base = dict(seed=seed, steps=30, batch_size=32, warmup=5, lr=2e-3)
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise UsageError(f"need steps >= 1 and batch_size >= 2, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or self.warmup < 0:
            raise UsageError(f"need lr > 0 and warmup >= 0, got {self.lr}, {self.warmup}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainSpec":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown pre-training parameters: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the trained ``model`` (eval mode), its open_clip
    ``model_cfg``, the ``preprocess_cfg``, the per-step ``losses`` and wall ``seconds``."""

    model: torch.nn.Module
    model_cfg: dict
    preprocess_cfg: dict
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


# -- configs and data -----------------------------------------------------------------------
def model_config_path(model: str) -> Path:
    """The JSON file of a bundled config name ("world-tiny") or a path to one."""
    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        return path
    bundled = MODEL_CONFIG_DIR / f"{model}.json"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
    raise UsageError(f"unknown model config {model!r}; bundled: {', '.join(names)}")


def load_model_config(model: str) -> dict:
    """open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
    cfg = json.loads(model_config_path(model).read_text(encoding="utf-8"))
    cfg.pop("preprocess_cfg", None)
    return cfg


def read_captions(world_root: str | os.PathLike) -> list[tuple[str, str]]:
    """(relative image path, caption) rows of ``captions.csv``."""
    path = Path(world_root) / "captions.csv"
    if not path.is_file():
        raise DataError(f"{path}: no captions.csv (generate the world first: sigrl world generate)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["image", "caption"]:
            raise DataError(f"{path}: header must be 'image,caption', got {header}")
        return [(row[0], row[1]) for row in reader if row]


def load_images(root: Path, rel_paths: list[str], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 tensor of the images (RGB, no resizing)."""
    out = torch.empty((len(rel_paths), 3, size, size), dtype=torch.uint8)
    for i, rel in enumerate(rel_paths):
        with Image.open(root / rel) as im:
            arr = np.array(im.convert("RGB"))
        if arr.shape[:2] != (size, size):
            raise DataError(f"{root / rel}: image is {arr.shape[1]}x{arr.shape[0]}, the model expects {size}x{size}")
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of (N, 3, H, W) uint8 images."""
    x = images[: min(len(images), 4096)].float().div_(255.0)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def get_tokenizer():
    import open_clip

    return open_clip.get_tokenizer(TOKENIZER_NAME)


def perturb_caption(caption: str, colours: list[str], shapes: list[str], rng: np.random.Generator) -> str:
    """A hard negative of ``caption``: swap the shape words of two differently shaped
    objects (binding), or replace one shape word by another shape (shape), or, with no
    shape word, one colour by another. Returns ``caption`` unchanged when nothing fits."""
    plural = {_plural(s): s for s in shapes}
    words = re.findall(r"[a-z]+|[^a-z]+", caption)
    shape_pos = [i for i, w in enumerate(words) if w in shapes or w in plural]
    colour_pos = [i for i, w in enumerate(words) if w in colours]
    base = {i: plural.get(words[i], words[i]) for i in shape_pos}

    def put(i: int, shape: str) -> None:
        words[i] = _plural(shape) if words[i] in plural else shape

    def colour(i: int) -> str | None:
        return words[i - 2] if i >= 2 and words[i - 2] in colours else None

    pairs = [(i, j) for i in shape_pos for j in shape_pos
             if i < j and base[i] != base[j] and colour(i) and colour(j) and colour(i) != colour(j)]
    if pairs and rng.uniform() < 0.5:
        i, j = pairs[int(rng.integers(len(pairs)))]
        si, sj = base[i], base[j]
        put(i, sj)
        put(j, si)
        return "".join(words)
    if shape_pos:
        i = shape_pos[int(rng.integers(len(shape_pos)))]
        present = set(base.values())
        others = [s for s in shapes if s not in present] or [s for s in shapes if s != base[i]]
        put(i, others[int(rng.integers(len(others)))])
        return "".join(words)
    if colour_pos:
        i = colour_pos[int(rng.integers(len(colour_pos)))]
        present = {words[k] for k in colour_pos}
        others = [c for c in colours if c not in present] or [c for c in colours if c != words[i]]
        words[i] = others[int(rng.integers(len(others)))]
        return "".join(words)
    return caption


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


# -- model pieces ---------------------------------------------------------------------------
def encode_text_cut(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` on tokens cut to the batch's longest text.

    tokens: (N, L) ids with L <= context_length -> (N, D) L2-normalised. Identical to
    ``model.encode_text(normalize=True)`` on the padded tokens (causal mask, pooling at
    the end-of-text token), several times cheaper on short captions.
    """
    n = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return F.normalize(x @ model.text_projection, dim=-1)


def _cut(tokens: torch.Tensor) -> torch.Tensor:
    nonpad = (tokens != 0).any(dim=0).nonzero()
    return tokens[:, : int(nonpad.max()) + 1] if len(nonpad) else tokens[:, :1]


def _lr_at(step: int, spec: PretrainSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.5 * spec.lr * (1 + math.cos(math.pi * progress))


def _param_groups(model, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, embeddings' 1-d params,
    and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW, fused where this torch supports it on CPU (several times faster step)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (TypeError, RuntimeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


# -- training -------------------------------------------------------------------------------
def contrastive_step(model, opt, loss) -> float:
    """One optimiser step on ``loss`` for an open_clip CLIP ``model``: zero the gradients,
    backward, step, then clamp the logit scale to [0, log 100] as CLIP does. Returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def pretrain(world_root: str | os.PathLike, spec: PretrainSpec, *, progress: bool = True) -> PretrainResult:
    """Train the model of ``spec.model`` contrastively on ``world_root/captions.csv``."""
    import open_clip
    from tqdm import tqdm

    root = Path(world_root)
    model_cfg = load_model_config(spec.model)
    size = int(model_cfg["vision_cfg"]["image_size"])
    context = int(model_cfg["text_cfg"].get("context_length", 77))
    rows = read_captions(root)
    if spec.max_images:
        rows = rows[: spec.max_images]
    if len(rows) < spec.batch_size:
        raise DataError(f"{root}: {len(rows)} captioned images, fewer than one batch of {spec.batch_size}; "
                        "a world has pre-training images only when asked (data.world.n_pretrain=N in a "
                        "config, WorldSpec(n_pretrain=N)); or use the shipped world model (--model world)")

    old_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        t0 = time.perf_counter()
        images = load_images(root, [r[0] for r in rows], size)
        mean, std = channel_stats(images)
        tokenizer = get_tokenizer()
        tokens = tokenizer([r[1] for r in rows], context_length=context)
        neg_tokens = None
        if spec.hard_negatives > 0:
            meta = json.loads((root / "world.json").read_text(encoding="utf-8")) if (root / "world.json").is_file() else {}
            if not meta.get("colours") or not meta.get("shapes"):
                raise DataError(f"{root}: hard negatives need the colour and shape words of world.json")
            neg_rng = np.random.default_rng([spec.seed, 13])
            negs = [perturb_caption(r[1], meta["colours"], meta["shapes"], neg_rng) for r in rows]
            neg_tokens = tokenizer(negs, context_length=context)
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)

        torch.manual_seed(spec.seed)
        model = open_clip.CLIP(**model_cfg)
        model.train()
        opt = _adamw(_param_groups(model, spec.weight_decay), spec.lr)
        loss_fn = open_clip.ClipLoss()
        order = np.random.default_rng([spec.seed, 11]).permutation
        perm, pos = order(len(rows)), 0
        losses: list[float] = []
        bar = tqdm(range(spec.steps), desc="pretrain", unit="step", disable=not progress, leave=False)
        for step in bar:
            if pos + spec.batch_size > len(perm):
                perm, pos = order(len(rows)), 0
            idx = torch.from_numpy(perm[pos : pos + spec.batch_size])
            pos += spec.batch_size
            x = (images[idx].float().div_(255.0) - mean_t) / std_t
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, spec)
            img_f = model.encode_image(x, normalize=True)
            scale = model.logit_scale.exp()
            if neg_tokens is None:
                txt_f = encode_text_cut(model, _cut(tokens[idx]))
                loss = loss_fn(img_f, txt_f, scale)
            else:
                both = encode_text_cut(model, _cut(torch.cat([tokens[idx], neg_tokens[idx]])))
                txt_f, neg_f = both[: len(idx)], both[len(idx) :]
                pair = scale * torch.stack([(img_f * txt_f).sum(-1), (img_f * neg_f).sum(-1)], dim=1)
                hard = F.cross_entropy(pair, torch.zeros(len(idx), dtype=torch.long))
                loss = loss_fn(img_f, txt_f, scale) + spec.hard_negatives * hard
            losses.append(contrastive_step(model, opt, loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        model.eval()
    finally:
        torch.set_num_threads(old_threads)
    preprocess_cfg = {
        "size": size,
        "mean": [round(m, 6) for m in mean],
        "std": [round(s, 6) for s in std],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    return PretrainResult(model, model_cfg, preprocess_cfg, losses, time.perf_counter() - t0)


# -- the cached checkpoint ------------------------------------------------------------------
def _world_fingerprint(world_root: Path) -> str:
    meta_path = world_root / "world.json"
    if not meta_path.is_file():
        raise DataError(f"{world_root}: not a finished world (no world.json); run: sigrl world generate")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return str(meta.get("fingerprint") or hashlib.sha256(meta_path.read_bytes()).hexdigest()[:16])


def vlp_fingerprint(world_root: str | os.PathLike, spec: PretrainSpec) -> str:
    """16 hex chars naming (world, model config contents, training spec, version)."""
    text = json.dumps(
        {
            "version": PRETRAIN_VERSION,
            "world": _world_fingerprint(Path(world_root)),
            "model_cfg": load_model_config(spec.model),
            "spec": {k: v for k, v in spec.to_dict().items() if k not in ("model", "threads")},
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def vlp_dir(world_root: str | os.PathLike, spec: PretrainSpec) -> Path:
    """Where :func:`ensure_tiny_vlp` keeps the checkpoint of (world, spec)."""
    return cache_dir() / f"vlp-{vlp_fingerprint(world_root, spec)}"


def save_vlp(result: PretrainResult, out_dir: str | os.PathLike, extra: dict | None = None) -> tuple[Path, Path]:
    """Write model.json, model.safetensors, open_clip_config.json and train.json into
    ``out_dir``; returns (config_path, weights_path)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(state, str(weights))
    config = out / "model.json"
    atomic_write_text(config, json.dumps({**result.model_cfg, "preprocess_cfg": result.preprocess_cfg}, indent=2) + "\n")
    atomic_write_text(
        out / "open_clip_config.json",
        json.dumps({"model_cfg": result.model_cfg, "preprocess_cfg": result.preprocess_cfg}, indent=2) + "\n",
    )
    info = {
        "losses": [round(l, 5) for l in result.losses],
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": float(np.mean(result.losses[-10:])) if result.losses else None,
        "seconds": round(result.seconds, 2),
        **(extra or {}),
    }
    atomic_write_text(out / "train.json", json.dumps(info, indent=1) + "\n")
    return config, weights


def ensure_tiny_vlp(world_root: str | os.PathLike, spec: PretrainSpec | None = None, *,
                    progress: bool = True) -> tuple[Path, Path]:
    """(config_path, weights_path) of the tiny VLP trained on ``world_root`` with ``spec``,
    trained on first use and cached under ``cache_dir()/vlp-<hash>/``."""
    spec = spec or PretrainSpec()
    root = Path(world_root)
    final = vlp_dir(root, spec)
    config, weights = final / "model.json", final / "model.safetensors"
    if config.is_file() and weights.is_file() and (final / "train.json").is_file():
        return config, weights
    result = pretrain(root, spec, progress=progress)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_vlp(result, tmp, {"spec": spec.to_dict(), "world": str(root), "world_fingerprint": _world_fingerprint(root)})
    if final.exists():
        if (final / "train.json").is_file():  # finished meanwhile by someone else
            shutil.rmtree(tmp)
            return config, weights
        shutil.rmtree(final)
    os.rename(tmp, final)
    return config, weights


def load_tiny_vlp(config_path: str | os.PathLike, weights_path: str | os.PathLike):
    """(model in eval mode, preprocess_cfg) from a saved checkpoint (the recipe above)."""
    import open_clip
    from safetensors.torch import load_file

    cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    preprocess_cfg = cfg.pop("preprocess_cfg", {})
    model = open_clip.CLIP(**cfg)
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval(), preprocess_cfg
