"""Training a head on frozen-backbone features with Accelerate.

``sigrl train CONFIG`` (and ``torchrun --nproc_per_node N -m sigrl train CONFIG``) runs
:func:`train`. The loop reads like Accelerate's examples; everything else is a function
it calls::

    accelerator = make_accelerator(cfg)                  # cpu/gpu, mixed precision, accumulation
    exp = prepare_experiment(cfg, accelerator)           # data, backbone, feature caches, parts
    model, optimizer, scheduler, loader = ... accelerator.prepare(...)
    for epoch in ...:
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(*features(batch), batch["target"], index=batch["index"], epoch=epoch)
                accelerator.backward(loss); optimizer.step(); scheduler.step(); optimizer.zero_grad()
        metrics = evaluate_parts(...)                    # gather_for_metrics on every process
        save best run, metrics.csv, training state

Data: the train split's seen columns with observed labels (``data.observed``: full,
single positive, partial — seeded); in zero-shot mode images with no observed positive
are dropped. A validation part is the dataset's own ``val`` split, or
``data.val_fraction`` of train held out with its full labels. Images that fail to load
are excluded (they are listed in the cache manifest).

Resume: after every epoch the Accelerate state (head, prompt context, loss state,
optimizer, scheduler, sampler, RNG states of every process) and the progress (epoch,
step, metric history, best metric, recovered labels) are saved to ``run/state`` — written
to ``run/state.tmp`` and renamed — so ``--resume`` continues exactly where the last
finished epoch left off, and ends with the same metrics as an uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import Config, config_to_dict
from .errors import CheckpointError, ConfigError, DataError, SigrlError

__all__ = ["train", "TrainResult", "prepare_experiment", "Experiment", "Part", "LabelText", "TrainModule",
           "make_accelerator"]


# ============================================================================ data
@dataclass
class Part:
    """Rows of one cached split with the targets used for it.

    ``rows`` index the split (and its feature cache); ``targets`` (len(rows), C) are the
    observed labels for training or the full labels for evaluation; ``unseen`` are the
    labels among ``labels`` never shown to training (ZSL columns, the last ones).
    """

    name: str
    split: object  # MultiLabelSplit
    rows: np.ndarray
    targets: np.ndarray
    labels: list[str]
    cache: object = None  # FeatureCache | None (live encoding)
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
    train: Part
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
            total += len(part.split) - int(part.cache.valid.sum()) if part.cache is not None else 0
        return total


def _config_error(key: str, err: Exception) -> ConfigError:
    return ConfigError(f"{key}: {str(err).splitlines()[0]}")


def load_dataset(cfg: Config):
    """The configured dataset as a ZeroShotDataset, and the world root (format world)."""
    from .data.base import ZeroShotDataset

    fmt, opts = cfg.data.format, dict(cfg.data.options)
    if fmt in ("world", "csv"):
        from .data.csvdata import load_csv_dataset

        root = Path(cfg.data.root) if fmt == "csv" else world_root(cfg)
        try:
            ds = load_csv_dataset(root, **opts)
            if cfg.data.all_labels and ds.unseen:  # one label set for everything (SPML, partial)
                from .data.csvdata import find_split_file, load_csv_split

                labels = list(ds.seen) + list(ds.unseen)
                splits = {s: load_csv_split(find_split_file(root, s), labels, root=root, **opts)
                          for s in ("train", "test") + (("val",) if ds.val is not None else ())}
                ds = ZeroShotDataset(splits["train"], splits["test"], labels, [], splits.get("val"))
        except TypeError as err:
            raise _config_error("data.options", err) from None
        return ds, (root if fmt == "world" else None)
    try:
        if fmt == "nuswide":
            from .data.nuswide import load_nuswide

            return load_nuswide(cfg.data.root, **opts), None
        # VOC / COCO: one loader call per split; the SPML protocol trains on the official
        # train split and tests on the official validation split (full labels)
        if fmt == "voc":
            from .data.voc import load_voc as load_split

            default = ("train", "val")
        else:
            from .data.coco import load_coco as load_split

            default = ("train2014", "val2014")
        train_name, test_name = opts.pop("train_split", default[0]), opts.pop("test_split", default[1])
        train, test = load_split(cfg.data.root, train_name, **opts), load_split(cfg.data.root, test_name, **opts)
    except TypeError as err:
        raise _config_error("data.options", err) from None
    if train.name == test.name:
        raise ConfigError(f"data.options: train_split and test_split are the same split ({train.name})")
    return ZeroShotDataset(train, test, list(train.labels), []), None


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


def world_root(cfg: Config) -> Path:
    from .world import WorldSpec, ensure_world

    return ensure_world(_spec(WorldSpec, cfg.data.world, "data.world"))


def build_backbone(cfg: Config, world: Path | None, device="cpu"):
    from .backbones import load_backbone

    model, pretrained = cfg.backbone.model, cfg.backbone.pretrained
    if model == "world":
        from .world.pretrain import PretrainSpec, ensure_tiny_vlp

        config_json, weights = ensure_tiny_vlp(world, _spec(PretrainSpec, cfg.backbone.pretrain, "backbone.pretrain"))
        model, pretrained = str(config_json), str(weights)
    # a backbone without weights (pretrained: null) is randomly initialised: do it the same way
    # every time, so its feature caches and runs stay consistent (and leave the global RNG alone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_backbone(model, pretrained, device=str(device), preprocess=dict(cfg.backbone.preprocess) or None)


def _observe(cfg: Config, targets: np.ndarray) -> np.ndarray:
    """Observed training labels (data.observed), seeded by data.seed."""
    if cfg.data.observed == "full":
        return targets
    from .data import observed as obs

    if cfg.data.observed == "single_positive":
        return np.asarray(obs.single_positive(targets, seed=cfg.data.seed), dtype=np.int8)
    return np.asarray(obs.partial(targets, cfg.data.proportion, seed=cfg.data.seed), dtype=np.int8)


def _holdout(cfg: Config, n: int) -> tuple[np.ndarray, np.ndarray]:
    from .data.observed import holdout_split

    train_idx, val_idx = holdout_split(n, cfg.data.val_fraction, seed=cfg.data.seed)
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(np.asarray(val_idx, dtype=np.int64))


def scan_images(split, rows) -> np.ndarray:
    """(len(rows),) bool: which images load (live encoding has no cache manifest)."""
    from .images import ImageError, load_image

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
    from .cache import ensure_cache
    from .paths import cache_dir
    from .prompts import load_prompts

    state = accelerator.state if accelerator is not None else None
    device = device or (accelerator.device if accelerator is not None else "cpu")
    main_first = accelerator.main_process_first if accelerator is not None else _nullcontext
    with main_first():
        dataset, world = load_dataset(cfg)
        backbone = build_backbone(cfg, world, device)
    try:
        prompts = load_prompts(cfg.prompts.name)
    except SigrlError as err:
        raise _config_error("prompts.name", err) from None
    if cfg.prompts.tune and not hasattr(backbone, "text_width"):
        raise ConfigError("prompts.tune=true needs an open_clip backbone with its own text transformer")
    root = Path(cfg.cache.dir) if cfg.cache.dir else cache_dir() / "features"
    live = cfg.train.augment or not cfg.cache.enabled
    kw = dict(shard_size=cfg.cache.shard_size, batch_size=cfg.cache.build_batch_size, state=state,
              progress=progress and (accelerator is None or accelerator.is_main_process))

    def cached(split):
        return ensure_cache(split, backbone, root, **kw)

    ds = dataset
    test_cache = cached(ds.test)
    test = Part("test", ds.test, np.flatnonzero(test_cache.valid), ds.test.targets[test_cache.valid],
                list(ds.test.labels), test_cache, list(ds.unseen))
    train = val = None
    if need_train:
        train_cache = None if live else cached(ds.train)
        rows = np.arange(len(ds.train))
        full = ds.train.targets
        observed = _observe(cfg, full)
        val_rows = None
        if ds.val is None and cfg.data.val_fraction > 0:
            rows, val_rows = _holdout(cfg, len(ds.train))
        valid = train_cache.valid if train_cache is not None else scan_images(ds.train, np.arange(len(ds.train)))
        keep = rows[valid[rows]]
        if ds.unseen:  # zero-shot: images with no (observed) seen positive are dropped
            keep = keep[(observed[keep] == 1).any(axis=1)]
        limit = cfg.data.max_train_images
        if limit is not None and len(keep) > limit:
            keep = np.sort(np.random.default_rng(cfg.data.seed).choice(keep, limit, replace=False))
        if len(keep) == 0:
            raise DataError(f"{ds.train.name or 'train'}: no training image left (after dropping unreadable "
                            "images and, in zero-shot mode, images without a seen positive)")
        train = Part("train", ds.train, keep, observed[keep], list(ds.train.labels), train_cache)
        if ds.val is not None:
            val_cache = cached(ds.val)
            val = Part("val", ds.val, np.flatnonzero(val_cache.valid), ds.val.targets[val_cache.valid],
                       list(ds.val.labels), val_cache, [u for u in ds.unseen if u in ds.val.labels])
        elif val_rows is not None:
            vcache = train_cache or cached(ds.train)
            vr = val_rows[vcache.valid[val_rows]]
            val = Part("val", ds.train, vr, full[vr], list(ds.train.labels), vcache)
    return Experiment(cfg, dataset, backbone, prompts, train, val, test, world)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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
        from .images import load_image

        img = load_image(self.part.split.path(int(self.part.rows[i])))
        return {"index": i, "pixels": self.transform(img), "target": self.targets[i]}


def augment_transform(pre) -> object:
    """Random resized crop + horizontal flip, then the backbone's normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def part_dataset(part: Part, backbone, augment: bool = False) -> torch.utils.data.Dataset:
    """Cached features when the part has a cache, else live images."""
    from .cache import FeatureDataset

    if part.cache is not None:
        return FeatureDataset(part.cache, part.rows, part.targets)
    return ImageRows(part, augment_transform(backbone.preprocess_config) if augment else backbone.preprocess)


def features(batch: dict, backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """(global, local) of a batch: read from the cache, or encoded now (live mode).

    Live features are rounded to float16 like the cache's, so a run does not depend on
    where its features come from (Adam turns tiny input differences into different runs).
    """
    if "pixels" in batch:
        g, l = backbone.encode_images(batch["pixels"])
        return g.half().float(), l.half().float()
    return batch["global"], batch["local"]


# ============================================================================ modules
class LabelText(nn.Module):
    """Label names -> label embeddings T (C, D) through the prompts and the frozen text
    encoder; with prompt tuning, ``context`` (n_ctx, W) learnable vectors shared by all
    labels (CoOp), initialised N(0, init_std²). The backbone is not a submodule (it is
    frozen and never saved with the run)."""

    def __init__(self, backbone, prompts, n_ctx: int = 0, init_std: float = 0.02, generator=None):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.prompts = prompts
        self.context = None
        if n_ctx:
            init = torch.randn(n_ctx, backbone.text_width, generator=generator) * init_std
            self.context = nn.Parameter(init)
        self._fixed: dict[tuple, torch.Tensor] = {}

    def forward(self, labels: list[str]) -> torch.Tensor:
        from .prompts import embed_labels

        if self.context is None:
            key = tuple(labels)
            if key not in self._fixed:
                self._fixed[key] = embed_labels(self.backbone, list(labels), self.prompts).detach()
            return self._fixed[key]
        return embed_labels(self.backbone, list(labels), self.prompts, context=self.context)


class TrainModule(nn.Module):
    """What is trained, as one module (so Accelerate/DDP syncs all of it): the head, the
    prompt context (in ``text``) and the loss's own state (e.g. ROLE's label estimates).

    ``forward(g (B,D), l (B,P,D), labels)`` -> logits (B, C);
    with ``observed`` (B, C) -> the scalar loss: ``loss(logits, observed)``, plus
    ``transport_weight`` x the conditional-transport cost (SCT) between the head's
    label-specific features F (B, C, D) and the label embeddings T (C, D) when a
    ``transport`` loss is given. Each image transports its observed (or recovered)
    positives (``transport_labels="observed"``), or every label weighted by the model's
    own detached probability (``"predicted"``)."""

    def __init__(self, head: nn.Module, text: LabelText, loss: nn.Module | None = None, *,
                 transport: nn.Module | None = None, transport_weight: float = 0.0,
                 transport_labels: str = "observed"):
        super().__init__()
        self.head, self.text, self.loss = head, text, loss
        self.transport = transport if transport is not None and transport_weight > 0 else None
        self.transport_weight, self.transport_labels = float(transport_weight), transport_labels
        self.pseudo_stats: dict = {}  # set by the trainer for losses with pseudo labels (VLPL)

    def forward(self, g, l, labels, observed=None, *, index=None, epoch=None):
        T = self.text(labels)
        if observed is None or self.transport is None:
            logits = self.head(g, l, T, label_names=list(labels))
            return logits if observed is None else self.loss(logits.float(), observed, index=index, epoch=epoch)
        logits, extras = self.head(g, l, T, label_names=list(labels), return_extras=True)
        loss = self.loss(logits.float(), observed, index=index, epoch=epoch)
        feats = extras.get("label_feats")
        if feats is None:
            raise ConfigError(f"loss.transport_weight: head {type(self.head).__name__} returns no label-specific "
                              "features (it needs local features); set loss.transport_weight=0")
        if self.transport_labels == "observed":
            weights = (observed > 0).float()
        else:
            weights = torch.sigmoid(logits.detach().float())
        return loss + self.transport_weight * self.transport(feats.float(), T.float(), weights)


def build_head(cfg: Config, exp: Experiment) -> nn.Module:
    from .checkpoint import build_head as make

    head = make(cfg.head.head_class, exp.backbone.embed_dim, cfg.head.options)
    if hasattr(head, "set_label_prior"):  # co-occurrence of the observed training positives
        pos = torch.as_tensor(np.asarray(exp.train.targets) == 1, dtype=torch.float32)
        head.set_label_prior(list(exp.train.labels), pos.t() @ pos, pos.sum(0))
    return head


def build_loss(cfg: Config, exp: Experiment) -> nn.Module:
    from .losses import build_loss as make

    loss = make(cfg.loss.name, num_images=len(exp.train), num_classes=len(exp.train.labels),
                num_epochs=cfg.train.epochs, **cfg.loss.options)
    if hasattr(loss, "assign_pseudo_labels"):
        # EM+APL: the trainer drives its pseudo labelling (refresh_pseudo_labels) from a
        # scoring of the whole training part; left to itself the loss would see only its
        # own process's images, and DDP's buffer broadcast would leave every rank rank 0's half
        loss.auto_update = False
    return loss


def build_recovery(cfg: Config):
    if cfg.method.name == "none":
        return None
    from .methods import build_recovery as make

    return make(cfg.method.name, **cfg.method.options)


def lr_lambda(cfg: Config, total_steps: int):
    warm = cfg.train.warmup_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.train.scheduler == "cosine":
            progress = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


# ============================================================================ progress
class Progress:
    """Counters and history saved with the training state (``register_for_checkpointing``)."""

    def __init__(self):
        self.epoch = 0  # next epoch to train
        self.step = 0
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.targets: torch.Tensor | None = None  # recovered training labels (label recovery)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "best": self.best,
                "best_epoch": self.best_epoch, "targets": self.targets}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int | None
    best_metrics: dict
    early_stop: str | None
    skipped_images: int = 0


# ============================================================================ accelerate
def make_accelerator(cfg: Config, run_dir: Path, resume: bool = False):
    """The Accelerator of a run (CPU when there is no GPU); refuses to overwrite a run
    directory holding a training state unless resuming."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    from accelerate.utils import LoggerType

    known = {t.value for t in LoggerType}
    unknown = sorted(set(cfg.trackers) - known)
    if unknown:
        raise ConfigError(f"trackers: unknown tracker {', '.join(unknown)}; Accelerate knows {', '.join(sorted(known))}")
    cpu = not torch.cuda.is_available()
    if cpu and cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=list(cfg.trackers) or None,
        project_dir=str(run_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True,
                                                  data_seed=cfg.train.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    active = {str(getattr(t, "value", t)) for t in accelerator.log_with}
    missing = sorted(set(cfg.trackers) - active - {"all"})
    if missing:
        raise ConfigError(f"trackers: {', '.join(missing)} not installed (install its package, e.g. "
                          "pip install tensorboard, or remove it from trackers)")
    n = accelerator.num_processes
    if n > 1 and cfg.train.batch_size % n:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must be a multiple "
                          f"of the number of processes ({n})")
    if not resume and (run_dir / "state").exists():
        raise ConfigError(f"{run_dir}: holds a training state from an earlier run; pass --resume to continue it, "
                          "or set output to a new directory")
    if accelerator.is_main_process:
        print(f"sigrl train: {n} processes, {accelerator.distributed_type.value}, device {accelerator.device}, "
              f"mixed precision {accelerator.mixed_precision}", file=sys.stderr)
    return accelerator


def _state_dirs(run_dir: Path) -> tuple[Path, Path, Path]:
    return run_dir / "state", run_dir / "state.tmp", run_dir / "state.old"


def save_training_state(accelerator, run_dir: Path) -> None:
    """``accelerator.save_state`` into ``state.tmp``, then swap it in for ``state``."""
    state, tmp, old = _state_dirs(run_dir)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "COMPLETE").write_text("ok\n")
        _fsync_dir(tmp)
        if old.exists() and (state / "COMPLETE").is_file():  # a kill after the last swap left it
            shutil.rmtree(old)
        if state.exists():
            os.replace(state, old)
        os.replace(tmp, state)
        _fsync_dir(run_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_training_state(accelerator, run_dir: Path) -> bool:
    """Restore the last saved state; False (and a note) when there is none."""
    state, _, old = _state_dirs(run_dir)
    for candidate in (state, old):  # old: a crash between the two renames
        if (candidate / "COMPLETE").is_file():
            try:
                accelerator.load_state(str(candidate))
            except Exception as err:  # noqa: BLE001 - a damaged state is the user's to delete
                raise CheckpointError(f"{candidate}: cannot restore the training state ({err}); "
                                      "delete it to start over") from None
            return True
    if accelerator.is_main_process:
        print(f"sigrl train: no saved state in {run_dir}; starting from epoch 1", file=sys.stderr)
    return False


# ============================================================================ the loop
def train(cfg: Config, *, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Train the configured head; write the run directory ``cfg.output``.

    Args:
        resume: continue from ``run/state`` (the last finished epoch) when it exists.
        stop_after: stop after this many epochs of this call (an interruption, for tests
            and time-sliced jobs); ``--resume`` continues.
    """
    from accelerate.utils import set_seed

    from .evaluate import evaluate_parts

    run_dir = Path(cfg.output)
    accelerator = make_accelerator(cfg, run_dir, resume)
    set_seed(cfg.train.seed)
    exp = prepare_experiment(cfg, accelerator, progress=progress)
    set_seed(cfg.train.seed)  # again: building caches may differ per process, the modules may not
    model, optimizer, scheduler, loader, recovery = build_training(cfg, exp)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    state = Progress()
    accelerator.register_for_checkpointing(state)
    if resume:
        load_training_state(accelerator, run_dir)
    early = early_stop_metric(cfg, exp)
    start_tracking(accelerator, cfg, run_dir)
    labels, epochs_run = list(exp.train.labels), 0
    pseudo_stats = accelerator.unwrap_model(model).pseudo_stats
    if pseudo_stats and accelerator.is_main_process:
        print("sigrl train: vlpl pseudo labels: " + ", ".join(f"{k} {v:.3f}" for k, v in pseudo_stats.items()),
              file=sys.stderr)
    apl = accelerator.unwrap_model(model).loss  # EM+APL: pseudo labels refreshed between epochs
    apl = apl if hasattr(apl, "assign_pseudo_labels") else None
    for epoch in range(state.epoch, cfg.train.epochs):
        if recovery is not None:  # label recovery between epochs, over the whole training part
            state.targets = recover_labels(recovery, epoch, model, exp, accelerator)
        if apl is not None and 0 < epoch and epoch >= apl.warmup_epochs:
            refresh_pseudo_labels(apl, model, exp, accelerator)
        if state.targets is not None:
            loader.dataset.set_targets(state.targets)
        model.train()
        loader.set_epoch(epoch)
        t0, losses = time.time(), []
        for batch in progress_bar(loader, accelerator, progress, f"epoch {epoch + 1}/{cfg.train.epochs}"):
            with accelerator.accumulate(model):
                g, l = features(batch, exp.backbone)
                loss = model(g, l, labels, batch["target"], index=batch["index"], epoch=epoch)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.detach().float())
            state.step += 1
        row = {"epoch": epoch + 1, "step": state.step,
               "train/loss": accelerator.gather(torch.stack(losses).mean().reshape(1)).mean().item(),
               "lr": scheduler.get_last_lr()[0], "time/epoch_s": round(time.time() - t0, 3)}
        if epoch == 0:  # facts about the run's pseudo labels (VLPL), once in metrics.csv
            row.update({f"pseudo/{k}": v for k, v in pseudo_stats.items()})
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            row.update(evaluate_parts(accelerator.unwrap_model(model), exp, accelerator))
        end_epoch(accelerator, state, row, early, accelerator.unwrap_model(model), exp, run_dir)
        epochs_run += 1
        if _patience_over(cfg, state) or (stop_after is not None and epochs_run >= stop_after):
            break
    return finish(accelerator, state, early, exp, run_dir)


def build_training(cfg: Config, exp: Experiment):
    """(model, optimizer, scheduler, train loader, label recovery or None), not yet prepared."""
    generator = torch.Generator().manual_seed(cfg.train.seed)
    text = LabelText(exp.backbone, exp.prompts, cfg.prompts.n_ctx if cfg.prompts.tune else 0,
                     cfg.prompts.init_std, generator)
    transport = None
    if cfg.loss.transport_weight > 0:
        from .losses.transport import ConditionalTransportLoss

        transport = ConditionalTransportLoss(tau=cfg.loss.transport_tau)
    model = TrainModule(build_head(cfg, exp), text, build_loss(cfg, exp), transport=transport,
                        transport_weight=cfg.loss.transport_weight, transport_labels=cfg.loss.transport_labels)
    if hasattr(model.loss, "fit_pseudo_labels"):  # VLPL: pseudo labels from the frozen backbone, once
        model.pseudo_stats = fit_pseudo_labels(model.loss, exp)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    train_set = part_dataset(exp.train, exp.backbone, augment=cfg.train.augment)
    # drop_last: an incomplete last batch would be padded with repeated images when split across
    # processes; dropping it (a different one each epoch) keeps 1 and N processes identical
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                                         num_workers=cfg.train.num_workers,
                                         drop_last=len(train_set) >= cfg.train.batch_size)
    total_steps = cfg.train.epochs * math.ceil(len(loader) / cfg.train.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    return model, optimizer, scheduler, loader, build_recovery(cfg)


def part_global_features(part: Part, backbone, batch_size: int = 64) -> torch.Tensor:
    """(len(part), D) normalised global features of a part: from its cache, or encoded."""
    if part.cache is not None:  # no local tokens read
        return part.cache.global_features(part.rows).float()
    loader = torch.utils.data.DataLoader(part_dataset(part, backbone), batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        out = [features(batch, backbone)[0].cpu() for batch in loader]
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)


def fit_pseudo_labels(loss: nn.Module, exp: Experiment) -> dict:
    """VLPL: score every training image against every label with the frozen backbone
    (cosine of global image feature and the prompt embedding, no trained part), and let
    the loss turn the scores into pseudo labels. Same inputs on every process, so every
    process gets the same labels.

    Returns their statistics: pseudo positives (and negatives) per image, and, when the
    dataset's full labels are richer than the observed ones (simulated single-positive or
    partial labels), the precision of the pseudo positives and the share of the hidden
    positives they find (``pseudo_pos_precision``, ``pseudo_pos_recall``)."""
    import torch.nn.functional as Fn

    from .prompts import embed_labels

    with torch.no_grad():  # the plain prompts: a tuned prompt context is not learnt yet
        feats = Fn.normalize(part_global_features(exp.train, exp.backbone), dim=-1)
        emb = Fn.normalize(embed_labels(exp.backbone, list(exp.train.labels), exp.prompts).float().cpu(), dim=-1)
    observed = torch.as_tensor(np.asarray(exp.train.targets), dtype=torch.float32)
    targets = loss.fit_pseudo_labels(feats @ emb.t(), observed)
    stats = dict(getattr(loss, "stats", {}))
    full = torch.as_tensor(np.asarray(exp.train.split.targets)[exp.train.rows], dtype=torch.float32)
    pseudo_pos, hidden = (targets > 0) & (observed == 0), (full > 0) & (observed == 0)
    if hidden.any():
        stats["pseudo_pos_recall"] = float((pseudo_pos & hidden).sum() / hidden.sum())
        if pseudo_pos.any():
            stats["pseudo_pos_precision"] = float((pseudo_pos & hidden).sum() / pseudo_pos.sum())
    return stats


def progress_bar(loader, accelerator, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, disable=not (progress and accelerator.is_main_process), leave=False,
                dynamic_ncols=True, file=sys.stderr)


def start_tracking(accelerator, cfg: Config, run_dir: Path) -> None:
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trackers:
        accelerator.init_trackers(run_dir.name or "sigrl", config=_flat(config_to_dict(cfg)))


def end_epoch(accelerator, state: Progress, row: dict, early: str | None, model: TrainModule, exp: Experiment,
              run_dir: Path) -> None:
    """Record the epoch: history, best run, metrics.csv, trackers, the training state."""
    state.history.append(row)
    state.epoch = row["epoch"]
    improved = _update_best(state, row, early)
    if accelerator.is_main_process:
        if improved:
            save_best(model, exp, exp.cfg, run_dir, row)
        write_metrics_csv(run_dir / "metrics.csv", state.history)
        print(_epoch_line(row), file=sys.stderr)
    if exp.cfg.trackers:
        accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["epoch"])
    save_training_state(accelerator, run_dir)


def finish(accelerator, state: Progress, early: str | None, exp: Experiment, run_dir: Path) -> TrainResult:
    if exp.cfg.trackers:
        accelerator.end_training()
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), state.history[-1] if state.history else {})
    if accelerator.is_main_process and best:
        _write_eval_json(run_dir, best, exp.cfg, exp, early)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, list(state.history), state.best_epoch, best, early, exp.skipped_images())


def _patience_over(cfg: Config, state: Progress) -> bool:
    if cfg.train.patience is None or state.best_epoch is None:
        return False
    return state.epoch - state.best_epoch >= cfg.train.patience


def early_stop_metric(cfg: Config, exp: Experiment) -> str | None:
    """The metric that picks the best epoch (higher is better), or None (keep the last)."""
    from .evaluate import metric_keys

    name = cfg.train.early_stop
    if name == "none" or (name == "auto" and exp.val is None):
        return None
    if name == "auto":
        return "val/zsl/mAP" if exp.val.unseen else "val/mAP"
    known = [k for p in (exp.val, exp.test) if p is not None for k in metric_keys(p)]
    if name not in known:
        raise ConfigError(f"train.early_stop: this run computes no metric {name!r}; choose one of "
                          f"{', '.join(known)}, 'auto' or 'none'")
    return name


def _update_best(state: Progress, row: dict, metric: str | None) -> bool:
    if metric is None:
        state.best_epoch = row["epoch"]
        return True
    if metric not in row:
        return False  # no evaluation this epoch
    value = float(row[metric])
    if state.best is None or value > state.best:
        state.best, state.best_epoch = value, row["epoch"]
        return True
    return False


def save_best(model: TrainModule, exp: Experiment, cfg: Config, run_dir: Path, row: dict) -> None:
    from .checkpoint import save_run

    save_run(run_dir, head=model.head, backbone=exp.backbone, prompts=exp.prompts, labels=list(exp.train.labels),
             config=cfg, context=model.text.context, metrics=row)


def recover_labels(recovery, epoch: int, model, exp: Experiment, accelerator) -> torch.Tensor:
    """Scores of the current model on the whole training part -> recovered targets."""
    from .evaluate import score_part

    observed = torch.as_tensor(np.asarray(exp.train.targets), dtype=torch.float32)
    scores = score_part(accelerator.unwrap_model(model), exp.train, exp.backbone, [list(exp.train.labels)],
                        accelerator)[0]
    feats = exp.train.cache.global_features(exp.train.rows) if exp.train.cache is not None else None
    targets = recovery.update(epoch, scores, feats, observed)
    return torch.as_tensor(targets, dtype=torch.float32).cpu()


def refresh_pseudo_labels(loss, model, exp: Experiment, accelerator) -> None:
    """One pseudo-labelling round before an epoch: the current model scores the whole
    training part (eval mode, gathered from every process, as the EM+APL reference
    re-scores its train set), and every process assigns the same pseudo labels."""
    from .evaluate import score_part

    logits = score_part(accelerator.unwrap_model(model), exp.train, exp.backbone, [list(exp.train.labels)],
                        accelerator)[0]
    observed = torch.as_tensor(np.asarray(exp.train.targets), dtype=torch.float32)
    loss.assign_pseudo_labels(torch.sigmoid(logits), observed)


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    from .safeio import atomic_write_text

    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _write_eval_json(run_dir: Path, best: dict, cfg: Config, exp: Experiment, early) -> None:
    import json

    from .safeio import atomic_write_text

    out = {"split": "test", "epoch": best.get("epoch"), "selected_by": early or "last epoch",
           "empty_class": cfg.eval.empty_class, "zero_shot": exp.zero_shot,
           "metrics": {k[len("test/"):]: v for k, v in best.items() if k.startswith("test/")}}
    atomic_write_text(run_dir / "eval.json", json.dumps(out, indent=1))


def _epoch_line(row: dict) -> str:
    keys = [k for k in row if k.endswith("mAP") or k.endswith("F1@3")]
    parts = [f"epoch {row['epoch']}", f"loss {row['train/loss']:.4f}"] + [f"{k} {row[k]:.4f}" for k in keys]
    return "sigrl train: " + ", ".join(parts)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out
