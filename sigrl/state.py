"""What a run keeps on disk while it trains: the resumable training state, ``metrics.csv``
and ``eval.json``.

Resume: after every epoch the Accelerate state (head, prompt context, loss state,
optimizer, scheduler, sampler, RNG states of every process) and the :class:`Progress`
(epoch, step, metric history, best metric, recovered labels) are saved by
:func:`save_training_state`: written to ``run/state.tmp``, marked ``COMPLETE``, then
swapped in for ``run/state`` (the previous one moved to ``run/state.old`` and deleted), so
a kill at any moment leaves a complete state under ``state`` or ``state.old``.
``--resume`` (:func:`load_training_state`) continues from the last finished epoch and ends
with the same metrics as an uninterrupted run.

Each history row carries ``time/session``: which call of ``sigrl train`` computed that
epoch (1, then +1 for every ``--resume``), so a resumed run shows which epochs it kept
and which it trained.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError
from .safeio import atomic_write_text, fsync_dir

__all__ = ["Progress", "TrainResult", "save_training_state", "load_training_state", "write_metrics_csv",
           "write_eval_json"]


class Progress:
    """Counters and history saved with the training state (``register_for_checkpointing``)."""

    def __init__(self):
        self.epoch = 0  # next epoch to train
        self.step = 0
        self.session = 1  # calls of train() on this run so far, this one included
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.targets: torch.Tensor | None = None  # recovered training labels (label recovery)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "session": self.session, "history": self.history,
                "best": self.best, "best_epoch": self.best_epoch, "targets": self.targets}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self.session = int(state.get("session", 1)) + 1  # this call is the next session

    def record(self, row: dict, metric: str | None) -> bool:
        """Append an epoch's row; True when it is the best so far by ``metric`` (higher
        is better; None: every epoch is the best, i.e. keep the last)."""
        row["time/session"] = self.session
        self.history.append(row)
        self.epoch = row["epoch"]
        if metric is None:
            self.best_epoch = row["epoch"]
            return True
        if metric not in row:
            return False  # no evaluation this epoch
        value = float(row[metric])
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, row["epoch"]
            return True
        return False

    def best_row(self) -> dict:
        return next((r for r in self.history if r["epoch"] == self.best_epoch),
                    self.history[-1] if self.history else {})


@dataclass
class TrainResult:
    """What :func:`sigrl.train.train` returns. ``epochs_trained``: epochs this call
    computed (a resumed run does not recompute the finished ones)."""

    run_dir: Path
    history: list[dict]
    best_epoch: int | None
    best_metrics: dict
    early_stop: str | None
    skipped_images: int = 0
    epochs_trained: int = 0


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
        fsync_dir(tmp)
        if old.exists() and (state / "COMPLETE").is_file():  # a kill after the last swap left it
            shutil.rmtree(old)
        if state.exists():
            os.replace(state, old)
        os.replace(tmp, state)
        fsync_dir(run_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


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


def has_training_state(run_dir: Path) -> bool:
    return _state_dirs(run_dir)[0].exists()


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch, every column any row has (atomic)."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_eval_json(run_dir: Path, best: dict, *, selected_by: str | None, empty_class: str,
                    zero_shot: bool) -> None:
    """``eval.json`` of the best epoch: its test metrics, unprefixed (what ``sigrl eval`` prints)."""
    out = {"split": "test", "epoch": best.get("epoch"), "selected_by": selected_by or "last epoch",
           "empty_class": empty_class, "zero_shot": zero_shot,
           "metrics": {k[len("test/"):]: v for k, v in best.items() if k.startswith("test/")}}
    atomic_write_text(run_dir / "eval.json", json.dumps(out, indent=1))
