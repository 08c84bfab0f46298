"""The one in-memory form every dataset loader returns.

A multi-label dataset split is a list of image paths plus a target matrix with entries
in {1, -1, 0}: +1 present, -1 absent, 0 unknown (the NUS-WIDE zero-shot encoding,
docs/design.md §4). Loaders for NUS-WIDE, VOC, COCO and the generic CSV/JSONL format
all return :class:`MultiLabelSplit` objects, so everything downstream (feature cache,
trainer, bench) sees one shape of data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class MultiLabelSplit:
    """One split of a multi-label dataset.

    Attributes:
        images: N image paths (absolute, or relative to ``root``).
        targets: (N, C) int8 in {1, -1, 0}; column c belongs to ``labels[c]``.
        labels: C label names (the text that goes into the prompts).
        root: directory that relative image paths are resolved against.
        name: a short name for messages and manifests ("nuswide/test").
    """

    images: list[str]
    targets: np.ndarray
    labels: list[str]
    root: Path = field(default_factory=Path)
    name: str = ""

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int8)
        if self.targets.ndim != 2 or self.targets.shape != (len(self.images), len(self.labels)):
            raise ValueError(
                f"targets must be (N, C) = ({len(self.images)}, {len(self.labels)}), "
                f"got {self.targets.shape}"
            )
        self.root = Path(self.root)

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        p = Path(self.images[i])
        return p if p.is_absolute() else self.root / p

    def subset(self, index) -> "MultiLabelSplit":
        """Rows ``index`` (array of ints or bool mask), same labels."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return MultiLabelSplit(
            [self.images[i] for i in index], self.targets[index], list(self.labels), self.root, self.name
        )

    def select_labels(self, names: list[str]) -> "MultiLabelSplit":
        """Columns for ``names`` (in that order); names not in the split raise KeyError."""
        pos = {n: i for i, n in enumerate(self.labels)}
        cols = [pos[n] for n in names]
        return MultiLabelSplit(list(self.images), self.targets[:, cols], list(names), self.root, self.name)


@dataclass
class ZeroShotDataset:
    """A dataset with a seen/unseen label split (NUS-WIDE 925/81, the embedded world).

    ``train`` carries the seen labels only (unseen columns are never shown to training);
    ``test`` carries ``seen + unseen`` labels in that order, so ZSL uses the last
    ``len(unseen)`` columns and GZSL all of them.
    """

    train: MultiLabelSplit
    test: MultiLabelSplit
    seen: list[str]
    unseen: list[str]
    val: MultiLabelSplit | None = None
