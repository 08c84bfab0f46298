"""Datasets: one in-memory form (:class:`MultiLabelSplit`, :class:`ZeroShotDataset`) and
one loader module per on-disk format.

=================  ==========================================================
module             what it reads / does
=================  ==========================================================
``base``           the split and dataset types every loader returns
``csvdata``        the generic format: labels.txt + train/test[/val].csv|.jsonl
``nuswide``        NUS-WIDE zero-shot split (official lists or BiAM/MKT files)
``voc``            PASCAL VOC 2007/2012, 20 classes, difficult-only = unknown
``coco``           MS-COCO 2014/2017 instances JSON (pycocotools), 80 classes
``observed``       seeded single-positive / partial labels, hold-out split
``check``          ``sigrl data check``: layout, files, images, problems
=================  ==========================================================

Loaders are imported lazily (``from sigrl.data import load_nuswide`` works but only
imports h5py etc. when used).
"""
from __future__ import annotations

from importlib import import_module

from .base import MultiLabelSplit, ZeroShotDataset

_LAZY = {
    "load_csv_split": "csvdata",
    "load_csv_dataset": "csvdata",
    "write_csv_split": "csvdata",
    "write_csv_dataset": "csvdata",
    "read_label_list": "csvdata",
    "load_nuswide": "nuswide",
    "nuswide_labels": "nuswide",
    "load_voc": "voc",
    "load_coco": "coco",
    "single_positive": "observed",
    "partial": "observed",
    "holdout_split": "observed",
    "save_observed": "observed",
    "load_observed": "observed",
    "check_dataset": "check",
}

__all__ = ["MultiLabelSplit", "ZeroShotDataset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
