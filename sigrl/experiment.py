"""A run config -> the experiment: dataset, observed labels, parts, backbone, features.

    exp = prepare_experiment(cfg, accelerator)
    exp.train, exp.val, exp.test     Parts: rows of a split + their targets + features
    exp.backbone, exp.prompts        the frozen backbone and the label-text templates

Data: the train split's labels are observed as ``data.observed`` says (full, single
positive, partial — seeded by ``data.seed``); in zero-shot mode images with no observed
seen positive are dropped (the NUS-WIDE protocol). The validation part is the dataset's
own ``val`` split, or ``data.val_fraction`` of train held out with its full labels.
Images that fail to load are left out (the feature cache's manifest lists them).

Features: every split is encoded once by the frozen backbone into a feature cache
(:mod:`sigrl.cache`); ``train.augment`` or ``cache.enabled: false`` encodes the training
images live instead. :func:`part_dataset` gives a part's rows as a torch Dataset either
way and :func:`features` turns its batches into ``(global (B, D), local (B, P, D))``.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbones import load_backbone
from .cache import FeatureDataset, ensure_cache
from .config import Config
from .data import observed as obs
from .data.formats import load_dataset
from .errors import ConfigError, DataError, SigrlError
from .finetune import FinetuneSpec
from .images import ImageError, load_image
from .paths import cache_dir
from .prompts import load_prompts
from .world import PretrainSpec, WorldSpec, ensure_tiny_vlp, ensure_world

__all__ = ["Part", "Experiment", "prepare_experiment", "open_dataset", "world_root", "build_backbone",
           "features_root", "split_part", "part_dataset", "features", "part_global_features"]


@dataclass
class Part:
    """Rows of one split with the targets used for them.

    ``rows`` index the split (and its feature cache); ``targets`` (len(rows), C) are the
    observed labels for training or the full labels for evaluation; ``unseen`` are the
    labels among ``labels`` never shown to training (ZSL columns, the last ones).
    """

    name: str
    split: object  # MultiLabelSplit
    rows: np.ndarray
    targets: np.ndarray
    labels: list[str]
    features: object = None  # FeatureCache | None (live encoding)
    unseen: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Experiment:
    """Everything a run needs besides the trainable modules."""

    cfg: Config
    dataset: object  # ZeroShotDataset
    backbone: object
    prompts: object  # PromptSet
    train: Part | None
    val: Part | None
    test: Part
    world_root: Path | None = None

    @property
    def zero_shot(self) -> bool:
        return bool(self.dataset.unseen)

    def skipped_images(self) -> int:
        """Unreadable images left out of the parts (distinct split rows)."""
        seen, total = set(), 0
        for part in (self.train, self.val, self.test):
            if part is None or id(part.split) in seen:
                continue
            seen.add(id(part.split))
            total += len(part.split) - int(part.features.valid.sum()) if part.features is not None else 0
        return total


# ------------------------------------------------------------------- config -> objects
def _config_error(key: str, err: Exception) -> ConfigError:
    return ConfigError(f"{key}: {str(err).splitlines()[0]}")


def _spec(cls, options: dict, key: str):
    """A WorldSpec/PretrainSpec from config ``options`` (``quick: true`` starts from
    ``cls.quick()``); errors name the config ``key``."""
    opts = dict(options)
    try:
        if opts.pop("quick", False):
            return cls.quick(**opts)
        return cls.from_dict(opts)
    except (SigrlError, TypeError) as err:
        raise _config_error(key, err) from None


def world_spec(cfg: Config) -> WorldSpec:
    """The embedded world's spec from ``cfg.data.world``."""
    return _spec(WorldSpec, cfg.data.world, "data.world")


def world_root(cfg: Config) -> Path:
    """The embedded world's folder (generated on first use)."""
    return ensure_world(world_spec(cfg))


def open_dataset(cfg: Config):
    """(the configured dataset as a ZeroShotDataset, the world root or None)."""
    world = world_root(cfg) if cfg.data.format == "world" else None
    root = world if world is not None else Path(cfg.data.root)
    loaded = load_dataset(cfg.data.format, root, cfg.data.options, all_labels=cfg.data.all_labels)
    return loaded.dataset, world


def build_backbone(cfg: Config, world: Path | None, device="cpu"):
    """The frozen backbone of ``cfg.backbone`` (``model: world``: the tiny world model)."""
    model, pretrained = cfg.backbone.model, cfg.backbone.pretrained
    if model == "world":
        options = {k: v for k, v in dict(cfg.backbone.pretrain or {}).items() if k != "quick"}
        if options:  # a model of your own, pre-trained on this world's captions (cached)
            config_json, weights = ensure_tiny_vlp(world, _spec(PretrainSpec, cfg.backbone.pretrain, "backbone.pretrain"))
        else:  # the world model shipped in the package (sigrl/world/model/, no pre-training)
            from .world.ship import shipped_paths

            config_json, weights = shipped_paths()
        model, pretrained = str(config_json), str(weights)
    # a backbone without weights (pretrained: null) is randomly initialised: do it the same way
    # every time, so its feature caches and runs stay consistent (and leave the global RNG alone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_backbone(model, pretrained, device=str(device), preprocess=dict(cfg.backbone.preprocess) or None)


def features_root(cfg: Config) -> Path:
    """Where the run's feature caches live: ``cache.dir``, else <sigrl cache>/features."""
    return Path(cfg.cache.dir) if cfg.cache.dir else cache_dir() / "features"


def _observe(cfg: Config, targets: np.ndarray) -> np.ndarray:
    """Observed training labels (data.observed), seeded by data.seed."""
    if cfg.data.observed == "full":
        return targets
    if cfg.data.observed == "single_positive":
        return np.asarray(obs.single_positive(targets, seed=cfg.data.seed), dtype=np.int8)
    mode = "sst" if cfg.data.observed == "partial_sst" else "per_image"  # sst: HCP-MLR-PL's draw
    return np.asarray(obs.partial(targets, cfg.data.proportion, seed=cfg.data.seed, mode=mode), dtype=np.int8)


def _holdout(cfg: Config, n: int) -> tuple[np.ndarray, np.ndarray]:
    train_idx, val_idx = obs.holdout_split(n, cfg.data.val_fraction, seed=cfg.data.seed)
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(np.asarray(val_idx, dtype=np.int64))


def scan_images(split, rows) -> np.ndarray:
    """(len(rows),) bool: which images load (live encoding has no cache manifest)."""
    ok = np.ones(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        try:
            load_image(split.path(int(r)))
        except ImageError as err:
            ok[i] = False
            print(f"sigrl train: skipping image {split.path(int(r))}: {err}", file=sys.stderr)
    return ok


def prepare_experiment(cfg: Config, accelerator=None, *, need_train: bool = True, progress: bool = True,
                       device=None) -> Experiment:
    """Load the data and the backbone, build (or open) the feature caches, make the parts.

    With ``accelerator`` every process must call this: downloads/generation happen on the
    main process first, cache shards are encoded by all processes together.
    """
    state = accelerator.state if accelerator is not None else None
    device = device or (accelerator.device if accelerator is not None else "cpu")
    main_first = accelerator.main_process_first if accelerator is not None else nullcontext
    with main_first():
        dataset, world = open_dataset(cfg)
        backbone = build_backbone(cfg, world, device)
    try:
        prompts = load_prompts(cfg.prompts.name)
    except SigrlError as err:
        raise _config_error("prompts.name", err) from None
    if (cfg.prompts.tune or cfg.prompts.learner != "fixed") and not hasattr(backbone, "text_width"):
        raise ConfigError(f"prompts.learner={'coop' if cfg.prompts.tune else cfg.prompts.learner} needs an "
                          "open_clip backbone with its own text transformer")
    root = features_root(cfg)
    finetune = FinetuneSpec.from_dict(cfg.backbone.finetune).enabled  # the encoder trains: nothing cached
    live = cfg.train.augment or not cfg.cache.enabled or finetune
    kw = dict(shard_size=cfg.cache.shard_size, batch_size=cfg.cache.build_batch_size, state=state,
              progress=progress and (accelerator is None or accelerator.is_main_process))

    def cached(split):
        return ensure_cache(split, backbone, root, **kw)

    def evaluated(name, split, rows, unseen):
        """A part scored with full labels: from the cache, or (fine-tuning) encoded live."""
        if finetune:
            rows = rows[scan_images(split, rows)]
            return Part(name, split, rows, split.targets[rows], list(split.labels), None, unseen)
        feats = cached(split)
        rows = rows[feats.valid[rows]]
        return Part(name, split, rows, split.targets[rows], list(split.labels), feats, unseen)

    ds = dataset
    test = evaluated("test", ds.test, np.arange(len(ds.test)), list(ds.unseen))
    train = val = None
    if need_train:
        train_feats = None if live else cached(ds.train)
        rows = np.arange(len(ds.train))
        full = ds.train.targets
        observed = _observe(cfg, full)
        val_rows = None
        if ds.val is None and cfg.data.val_fraction > 0:
            rows, val_rows = _holdout(cfg, len(ds.train))
        valid = train_feats.valid if train_feats is not None else scan_images(ds.train, np.arange(len(ds.train)))
        keep = rows[valid[rows]]
        if ds.unseen:  # zero-shot: images with no (observed) seen positive are dropped
            keep = keep[(observed[keep] == 1).any(axis=1)]
        limit = cfg.data.max_train_images
        if limit is not None and len(keep) > limit:
            keep = np.sort(np.random.default_rng(cfg.data.seed).choice(keep, limit, replace=False))
        if len(keep) == 0:
            raise DataError(f"{ds.train.name or 'train'}: no training image left (after dropping unreadable "
                            "images and, in zero-shot mode, images without a seen positive)")
        train = Part("train", ds.train, keep, observed[keep], list(ds.train.labels), train_feats)
        if ds.val is not None:
            val = evaluated("val", ds.val, np.arange(len(ds.val)), [u for u in ds.unseen if u in ds.val.labels])
        elif val_rows is not None:
            val = evaluated("val", ds.train, val_rows, [])
    return Experiment(cfg, dataset, backbone, prompts, train, val, test, world)


def split_part(split, backbone, root, *, unseen=(), progress: bool = True, name: str = "test") -> Part:
    """Every readable image of ``split`` with its full labels, features from the cache in
    ``root`` (built on first use): what a benchmark scores."""
    feats = ensure_cache(split, backbone, root, progress=progress)
    return Part(name, split, np.flatnonzero(feats.valid), split.targets[feats.valid], list(split.labels), feats,
                list(unseen))


# ------------------------------------------------------------------------- features
class ImageRows(torch.utils.data.Dataset):
    """Live encoding: item ``i`` is the preprocessed (optionally augmented) image."""

    def __init__(self, part: Part, transform):
        self.part, self.transform = part, transform
        self.targets = torch.as_tensor(np.asarray(part.targets), dtype=torch.float32)

    def __len__(self):
        return len(self.part.rows)

    def set_targets(self, targets) -> None:
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)

    def __getitem__(self, i):
        img = load_image(self.part.split.path(int(self.part.rows[i])))
        return {"index": i, "pixels": self.transform(img), "target": self.targets[i]}


def augment_transform(pre, randaugment: bool = False) -> object:
    """Random resized crop + horizontal flip (+ RandAugment: the fine-tuning regime), then
    the backbone's normalisation."""
    from torchvision import transforms as T  # only augmented runs need torchvision

    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        *([T.RandAugment()] if randaugment else []),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def part_dataset(part: Part, backbone, augment: bool = False, randaugment: bool = False) -> torch.utils.data.Dataset:
    """Cached features when the part has a cache, else live images."""
    if part.features is not None:
        return FeatureDataset(part.features, part.rows, part.targets)
    if augment or randaugment:
        return ImageRows(part, augment_transform(backbone.preprocess_config, randaugment))
    return ImageRows(part, backbone.preprocess)


def features(batch: dict, backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """(global (B, D), local (B, P, D)) of a batch: read from the cache, or encoded now.

    Live features are rounded to float16 like the cache's, so a run does not depend on
    where its features come from (Adam turns tiny input differences into different runs).
    """
    if "pixels" in batch:
        g, l = backbone.encode_images(batch["pixels"])
        return g.half().float(), l.half().float()
    return batch["global"], batch["local"]


def part_global_features(part: Part, backbone, batch_size: int = 64) -> torch.Tensor:
    """(len(part), D) global features of a part: from its cache (no local tokens read), or encoded."""
    if part.features is not None:
        return part.features.global_features(part.rows).float()
    loader = torch.utils.data.DataLoader(part_dataset(part, backbone), batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        out = [features(batch, backbone)[0].cpu() for batch in loader]
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)
