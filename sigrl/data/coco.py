"""MS-COCO 2014 / 2017 as multi-label classification (80 categories), via pycocotools.

Layout::

    annotations/instances_<split>.json   split = train2014, val2014, train2017, val2017
    <split>/<file_name>                  the images (or images/<split>/<file_name>)

Columns: the categories of the JSON sorted by category id (80 on real COCO; ids are not
contiguous), named by their ``name``. Image i, category c: +1 if any annotation
(crowd or not) of category c is on image i, else -1. Every image of the JSON is kept
(``drop_empty=True`` drops images without any annotation). COCO has no unknown entries.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from ..errors import DataError, SigrlError, UsageError
from ..safeio import safe_relpath
from .base import MultiLabelSplit

__all__ = ["COCO_SPLITS", "annotation_file", "find_coco_splits", "load_coco"]

COCO_SPLITS = ("train2014", "val2014", "train2017", "val2017")


def annotation_file(root: str | Path, split: str) -> Path:
    """``root/annotations/instances_<split>.json``."""
    return Path(root) / "annotations" / f"instances_{split}.json"


def find_coco_splits(root: str | Path) -> list[str]:
    """The splits of :data:`COCO_SPLITS` whose instances JSON exists under ``root``."""
    return [s for s in COCO_SPLITS if annotation_file(root, s).is_file()]


def _image_dir(root: Path, split: str) -> str:
    for rel in (split, f"images/{split}"):
        if (root / rel).is_dir():
            return rel
    return split


def _load_api(path: Path):
    from pycocotools.coco import COCO

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected a COCO instances JSON)") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise DataError(f"{path}: not valid COCO JSON (nested too deeply)") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: expected a COCO instances JSON with 'images' and 'categories' lists")
    data.setdefault("annotations", [])
    api = COCO()
    api.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            api.createIndex()
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed COCO JSON (missing or bad field {err})") from None
    return api


def load_coco(root: str | Path, split: str = "val2014", *, drop_empty: bool = False,
              problems: list[str] | None = None) -> MultiLabelSplit:
    """One COCO split as a MultiLabelSplit (see module docstring).

    Args:
        root: COCO root holding ``annotations/`` and the image folders.
        split: e.g. "train2014", "val2014" (any name with an ``instances_<split>.json``).
        drop_empty: drop images that have no annotation.
        problems: collect per-image defects (bad file names, unknown category ids)
            here and skip those images instead of raising.
    """
    root = Path(root)
    if not split or "/" in split or "\\" in split:
        raise UsageError(f"split must be a name like val2014, got {split!r}")
    path = annotation_file(root, split)
    api = _load_api(path)
    cats = sorted(api.dataset["categories"], key=lambda c: c["id"])
    names = [str(c.get("name", "")).strip() for c in cats]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise DataError(f"{path}: category names must be non-empty and unique")
    col = {c["id"]: i for i, c in enumerate(cats)}
    img_dir = _image_dir(root, split)
    images, rows = [], []
    for img in api.dataset["images"]:
        try:
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise DataError(f"{path}: an image entry lacks 'id' or 'file_name' ({str(img)[:80]})")
            rel = safe_relpath(f"{img_dir}/{safe_relpath(img['file_name'], where=str(path))}")
            row = np.full(len(cats), -1, dtype=np.int8)
            anns = api.imgToAnns.get(img["id"], [])
            for ann in anns:
                cid = ann.get("category_id")
                if cid not in col:
                    raise DataError(f"{path}: annotation {ann.get('id')} has unknown category_id {cid!r}")
                row[col[cid]] = 1
        except SigrlError as err:
            if problems is None:
                raise
            problems.append(str(err))
            continue
        if drop_empty and not anns:
            continue
        images.append(rel)
        rows.append(row)
    targets = np.stack(rows) if rows else np.zeros((0, len(cats)), dtype=np.int8)
    return MultiLabelSplit(images, targets, names, root, f"coco/{split}")
