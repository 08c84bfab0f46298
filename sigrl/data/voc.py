"""PASCAL VOC 2007 / 2012 as multi-label classification (20 classes).

Layout (``root`` is the year directory, e.g. ``VOCdevkit/VOC2012``; a parent holding
``VOC<year>`` or ``VOCdevkit/VOC<year>`` is accepted, see :func:`find_voc_root`)::

    Annotations/<id>.xml                 one per image: <object><name>dog</name>
                                         <difficult>0|1</difficult></object> ...
    ImageSets/Main/{train,val,trainval,test}.txt   image ids, one per line
    JPEGImages/<id>.jpg

Targets of image i, class c (columns in :data:`VOC_CLASSES` order):

* +1 if some object of class c is not marked difficult;
* if every object of class c is difficult: ``difficult="unknown"`` (default) → 0, so
  the class is left out of that image's AP ranking — the usual VOC protocol;
  ``"positive"`` → +1; ``"negative"`` → -1;
* -1 if no object of class c.

Annotation XML is read with :mod:`xml.etree.ElementTree` (expat; no external entities,
entity-expansion attacks limited by expat ≥ 2.4). A class name outside the 20, a
malformed XML file or a missing annotation raises DataError naming the file, or with
``problems=[]`` is reported there and the image skipped.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import DataError, SigrlError, UsageError
from ..safeio import safe_relpath
from .base import MultiLabelSplit

__all__ = ["VOC_CLASSES", "VOC_SPLITS", "find_voc_root", "read_split_ids", "parse_annotation", "load_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_SPLITS = ("train", "val", "trainval", "test")
_DIFFICULT = {"unknown": 0, "positive": 1, "negative": -1}


def _is_voc_dir(p: Path) -> bool:
    return (p / "ImageSets" / "Main").is_dir() and (p / "Annotations").is_dir()


def find_voc_root(root: str | Path, year: int | str | None = None) -> Path:
    """The VOC year directory at or under ``root``.

    Looks at ``root`` itself, then ``root/VOC<year>`` and ``root/VOCdevkit/VOC<year>``
    (any year when ``year`` is None; more than one found → UsageError asking for it).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a VOC root with Annotations/ and ImageSets/Main/)")
    if _is_voc_dir(root):
        return root
    pattern = f"VOC{year}" if year is not None else "VOC20[0-9][0-9]"
    found = sorted({p for base in (root, root / "VOCdevkit") if base.is_dir() for p in base.glob(pattern)
                    if _is_voc_dir(p)})
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UsageError(f"{root}: several VOC years found ({', '.join(p.name for p in found)}); pass the year")
    raise DataError(
        f"{root / 'ImageSets' / 'Main'}: directory not found; expected a VOC year directory "
        "(Annotations/, ImageSets/Main/, JPEGImages/) at or under this root"
    )


def read_split_ids(root: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt`` (first token of each non-blank line)."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected the image ids of split {split!r})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8 (expected one image id per line)") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        if not re.fullmatch(r"[\w.-]+", tok[0]) or tok[0] in (".", ".."):
            raise DataError(f"{path}:{lineno}: malformed line (expected an image id like 2008_000002)")
        ids.append(tok[0])
    return ids


def parse_annotation(path: Path) -> list[tuple[str, bool]]:
    """``[(class name, difficult), ...]`` for every <object> of a VOC annotation file."""
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected the annotation of this image)") from None
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML ({err})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory (expected the annotation XML of this image)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    out = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        diff = (obj.findtext("difficult") or "0").strip()
        if diff not in ("0", "1"):
            raise DataError(f"{path}: <difficult> must be 0 or 1, got {diff!r}")
        out.append((name, diff == "1"))
    return out


def load_voc(root: str | Path, split: str = "trainval", *, year: int | str | None = None,
             difficult: str = "unknown", problems: list[str] | None = None) -> MultiLabelSplit:
    """One VOC split as a MultiLabelSplit with the 20 classes (see module docstring).

    Args:
        root: VOC year directory (or a parent, see :func:`find_voc_root`).
        split: "train", "val", "trainval" or "test".
        difficult: how a class present only as difficult is encoded: "unknown" (0),
            "positive" (+1) or "negative" (-1).
        problems: collect per-image defects here and skip those images.
    """
    if split not in VOC_SPLITS:
        raise UsageError(f"split must be one of {', '.join(VOC_SPLITS)}, got {split!r}")
    if difficult not in _DIFFICULT:
        raise UsageError(f"difficult must be 'unknown', 'positive' or 'negative', got {difficult!r}")
    root = find_voc_root(root, year)
    col = {c: i for i, c in enumerate(VOC_CLASSES)}
    ids = read_split_ids(root, split)
    rows, images = [], []
    for image_id in ids:
        ann = root / "Annotations" / f"{image_id}.xml"
        try:
            objects = parse_annotation(ann)
            row = np.full(len(VOC_CLASSES), -1, dtype=np.int8)
            hard = np.zeros(len(VOC_CLASSES), dtype=bool)
            for name, is_difficult in objects:
                if name not in col:
                    raise DataError(f"{ann}: unknown class {name!r} (expected one of the 20 VOC classes)")
                if is_difficult:
                    hard[col[name]] = True
                else:
                    row[col[name]] = 1
            only_hard = hard & (row != 1)
            row[only_hard] = _DIFFICULT[difficult]
        except SigrlError as err:
            if problems is None:
                raise
            problems.append(str(err))
            continue
        rows.append(row)
        images.append(safe_relpath(f"JPEGImages/{image_id}.jpg"))
    targets = np.stack(rows) if rows else np.zeros((0, len(VOC_CLASSES)), dtype=np.int8)
    return MultiLabelSplit(images, targets, list(VOC_CLASSES), root, f"{root.name.lower()}/{split}")
