"""The training loop: a head on frozen-backbone features, through Accelerate.

``sigrl train CONFIG`` (and ``torchrun --nproc_per_node N -m sigrl train CONFIG``) runs
:func:`train`, which reads top to bottom like Accelerate's ``nlp_example.py``:

    build    the accelerator, the experiment (data, backbone, feature caches, parts),
             the model (label text + head + loss), optimizer, schedule, loader, epoch hooks
    prepare  accelerator.prepare(...), resume the saved state
    loop     epoch hooks -> batches: forward, accelerator.backward, step
    gather   the mean training loss of every process
    evaluate the val/test metrics (sigrl.evaluate), the best epoch saved (sigrl.checkpoint),
             metrics.csv and the training state (sigrl.state)

Where each piece lives: :mod:`sigrl.experiment` (config -> data, parts, backbone,
features), :mod:`sigrl.model` (what is trained), :mod:`sigrl.hooks` (VLPL, EM+APL,
label recovery between epochs), :mod:`sigrl.scorer` + :mod:`sigrl.evaluate` (scores and
metrics), :mod:`sigrl.state` (resume, metrics.csv, eval.json).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, LoggerType, set_seed
from tqdm.auto import tqdm

from .checkpoint import save_run
from .config import Config, config_to_dict
from .errors import ConfigError
from .evaluate import evaluate_parts, metric_keys
from .experiment import Experiment, features, part_dataset, prepare_experiment
from .finetune import FinetuneSpec, tail_state
from .hooks import before_epoch, epoch_hooks, setup_hooks
from .model import TrainModule, build_model, lr_lambda
from .scorer import Scorer
from .state import (Progress, TrainResult, has_training_state, load_training_state, save_training_state,
                    write_eval_json, write_metrics_csv)

__all__ = ["train", "make_accelerator", "early_stop_metric"]


def train(cfg: Config, *, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Train the configured head; write the run directory ``cfg.output``.

    Args:
        resume: continue from ``run/state`` (the last finished epoch) when it exists.
        stop_after: stop after this many epochs of this call (an interruption, for tests
            and time-sliced jobs); ``--resume`` continues.
    """
    # --- build
    run_dir = Path(cfg.output)
    accelerator = make_accelerator(cfg, run_dir, resume)
    set_seed(cfg.train.seed)
    exp = prepare_experiment(cfg, accelerator, progress=progress)
    set_seed(cfg.train.seed)  # again: building caches may differ per process, the modules may not
    model = build_model(cfg, exp)
    hooks = epoch_hooks(cfg, model.loss)
    facts = setup_hooks(hooks, Scorer(model.text, model.head), exp, verbose=accelerator.is_main_process)
    optimizer = torch.optim.AdamW(model.param_groups(cfg.train.lr, cfg.train.weight_decay))
    finetune = FinetuneSpec.from_dict(cfg.backbone.finetune)
    train_set = part_dataset(exp.train, exp.backbone, augment=cfg.train.augment,
                             randaugment=finetune.enabled and finetune.randaugment)
    # drop_last: an incomplete last batch would be padded with repeated images when split across
    # processes; dropping it (a different one each epoch) keeps 1 and N processes identical
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                                         num_workers=cfg.train.num_workers,
                                         drop_last=len(train_set) >= cfg.train.batch_size)
    total_steps = cfg.train.epochs * math.ceil(len(loader) / cfg.train.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))

    # --- prepare
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    state = Progress()
    accelerator.register_for_checkpointing(state)
    if resume:
        load_training_state(accelerator, run_dir)
    early = early_stop_metric(cfg, exp)
    start_tracking(accelerator, cfg, run_dir)
    core = accelerator.unwrap_model(model)
    scorer = Scorer(core.text, core.head, name=run_dir.name)
    labels, epochs_run = list(exp.train.labels), 0

    # --- loop
    for epoch in range(state.epoch, cfg.train.epochs):
        state.targets = before_epoch(hooks, epoch, scorer, exp, accelerator, state.targets)
        if state.targets is not None:
            loader.dataset.set_targets(state.targets)
        model.train()
        loader.set_epoch(epoch)
        t0, losses = time.time(), []
        for batch in progress_bar(loader, accelerator, progress, f"epoch {epoch + 1}/{cfg.train.epochs}"):
            with accelerator.accumulate(model):
                g, l = features(batch, exp.backbone) if core.visual is None else (None, None)  # else: fine-tuning
                loss = model(g, l, labels, batch["target"], index=batch["index"], epoch=epoch,
                             pixels=batch.get("pixels"))
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.detach().float())
            state.step += 1
        # --- gather, evaluate
        row = {"epoch": epoch + 1, "step": state.step,
               "train/loss": accelerator.gather(torch.stack(losses).mean().reshape(1)).mean().item(),
               "lr": scheduler.get_last_lr()[0], "time/epoch_s": round(time.time() - t0, 3)}
        if epoch == 0:  # facts about the run's pseudo labels (VLPL), once in metrics.csv
            row.update({f"pseudo/{k}": v for k, v in facts.items()})
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            row.update(evaluate_parts(scorer, exp, accelerator))
        end_epoch(accelerator, state, row, early, core, exp, run_dir)
        epochs_run += 1
        if _patience_over(cfg, state) or (stop_after is not None and epochs_run >= stop_after):
            break
    return finish(accelerator, state, early, exp, run_dir, epochs_run)


# ============================================================================ accelerate
def make_accelerator(cfg: Config, run_dir: Path, resume: bool = False) -> Accelerator:
    """The Accelerator of a run (CPU when there is no GPU); refuses to overwrite a run
    directory holding a training state unless resuming."""
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
    if not resume and has_training_state(run_dir):
        raise ConfigError(f"{run_dir}: holds a training state from an earlier run; pass --resume to continue it, "
                          "or set output to a new directory")
    if accelerator.is_main_process:
        print(f"sigrl train: {n} processes, {accelerator.distributed_type.value}, device {accelerator.device}, "
              f"mixed precision {accelerator.mixed_precision}", file=sys.stderr)
    return accelerator


def progress_bar(loader, accelerator, progress: bool, desc: str):
    return tqdm(loader, desc=desc, disable=not (progress and accelerator.is_main_process), leave=False,
                dynamic_ncols=True, file=sys.stderr)


def start_tracking(accelerator, cfg: Config, run_dir: Path) -> None:
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trackers:
        accelerator.init_trackers(run_dir.name or "sigrl", config=_flat(config_to_dict(cfg)))


# ============================================================================ after an epoch
def end_epoch(accelerator, state: Progress, row: dict, early: str | None, model: TrainModule, exp: Experiment,
              run_dir: Path) -> None:
    """Record the epoch: history, best run, metrics.csv, trackers, the training state."""
    improved = state.record(row, early)
    if accelerator.is_main_process:
        if improved:
            tuned = tail_state(exp.backbone, model.visual.spec) if model.visual is not None else None
            save_run(run_dir, head=model.head, backbone=exp.backbone, prompts=exp.prompts,
                     labels=list(exp.train.labels), config=exp.cfg, learner=model.text, metrics=row,
                     backbone_tensors=tuned)
        write_metrics_csv(run_dir / "metrics.csv", state.history)
        print(_epoch_line(row), file=sys.stderr)
    if exp.cfg.trackers:
        accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["epoch"])
    save_training_state(accelerator, run_dir)


def finish(accelerator, state: Progress, early: str | None, exp: Experiment, run_dir: Path,
           epochs_run: int) -> TrainResult:
    if exp.cfg.trackers:
        accelerator.end_training()
    best = state.best_row()
    if accelerator.is_main_process and best:
        write_eval_json(run_dir, best, selected_by=early, empty_class=exp.cfg.eval.empty_class,
                        zero_shot=exp.zero_shot)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, list(state.history), state.best_epoch, best, early, exp.skipped_images(),
                       epochs_run)


def _patience_over(cfg: Config, state: Progress) -> bool:
    if cfg.train.patience is None or state.best_epoch is None:
        return False
    return state.epoch - state.best_epoch >= cfg.train.patience


def early_stop_metric(cfg: Config, exp: Experiment) -> str | None:
    """The metric that picks the best epoch (higher is better), or None (keep the last)."""
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
