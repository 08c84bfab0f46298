"""CUB-200-2011 attributes (312 labels) and Cole et al.'s formatted ``.npy`` files.

The single-positive papers (Cole et al. 2021, VLPL, EM+APL) use CUB as a 312-label
multi-label dataset: label j of image i is attribute j's ``is_present`` flag. Their
preprocessing (elijahcole/single-positive-multi-label ``preproc/format_cub.py``) reads
the official files and writes ``formatted_{train,val}_{images,labels}.npy``; "train" is
``is_train = 1`` of ``train_test_split.txt`` and "val" the rest (the SPML protocol uses
it as the test set and holds 20 % of train out as validation: ``data.val_fraction``).

Two layouts are read (``root`` may be the directory holding ``CUB_200_2011/`` or that
directory itself; Cole et al.'s ``data/cub`` with ``CUB_200_2011/CUB_200_2011/`` works too):

official (the ``CUB_200_2011.tgz`` archive unpacked)::

    attributes.txt                                  "<id> <name>" x 312 (next to or inside
                                                    CUB_200_2011/, or in its attributes/)
    CUB_200_2011/images.txt                         "<image id> <relative path>"
    CUB_200_2011/train_test_split.txt               "<image id> <1 train | 0 test>"
    CUB_200_2011/attributes/image_attribute_labels.txt
                                                    "<image id> <attribute id> <is_present>
                                                    <certainty id> <time>" per pair
    CUB_200_2011/images/<relative path>

formatted (what Cole et al.'s ``format_cub.py`` writes; takes precedence when present)::

    formatted_train_images.npy  formatted_train_labels.npy  (N, 312) 0/1
    formatted_val_images.npy    formatted_val_labels.npy
    + attributes.txt for the names (official layout) and the images directory

Targets: +1 where ``is_present`` is 1, -1 where it is 0 (Cole et al.'s 0 = absent); no
entry is unknown. Label text: the attribute name with ``has_`` dropped and ``::`` and
``_`` as spaces ("has_bill_shape::curved_(up_or_down)" -> "bill shape curved (up or
down)"), the names as sentences for the text encoder; ``label_text="raw"`` keeps the file's names.

:func:`load_formatted` reads the same formatted files for any dataset (format
``formatted``: VOC, COCO, NUS-WIDE as Cole et al. and VLPL ship them), with the names in
a text file (one per line) and the images under ``image_dir``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from .base import MultiLabelSplit

__all__ = ["N_ATTRIBUTES", "find_cub_root", "cub_attribute_names", "attribute_text", "load_cub",
           "load_formatted"]

N_ATTRIBUTES = 312
_INNER = "CUB_200_2011"


def _has_official(d: Path) -> bool:
    return (d / "images.txt").is_file() and (d / "train_test_split.txt").is_file()


def find_cub_root(root: str | Path) -> Path:
    """The directory holding ``images.txt`` (the inner ``CUB_200_2011``) at or under ``root``,
    or ``root`` itself when it holds Cole et al.'s formatted files."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a CUB-200-2011 root)")
    for d in (root, root / _INNER, root / _INNER / _INNER):
        if _has_official(d):
            return d
    if (root / "formatted_train_labels.npy").is_file():
        return root
    raise DataError(f"{root / _INNER / 'images.txt'}: file not found; expected the unpacked CUB_200_2011 archive "
                    "(images.txt, train_test_split.txt, attributes/image_attribute_labels.txt) or Cole et al.'s "
                    "formatted_{train,val}_{images,labels}.npy at or under this root")


def _attributes_file(root: Path, inner: Path) -> Path:
    for cand in (inner.parent / "attributes.txt", inner / "attributes.txt", inner / "attributes" / "attributes.txt",
                 root / "attributes.txt", root / _INNER / "attributes.txt"):
        if cand.is_file():
            return cand
    raise DataError(f"{inner.parent / 'attributes.txt'}: file not found (expected the 312 attribute names, "
                    "'<id> <name>' per line)")


def _read_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected {what})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8 (expected {what})") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def cub_attribute_names(path: Path) -> list[str]:
    """The attribute names of ``attributes.txt`` in id order (ids must be 1..K)."""
    names = []
    for lineno, tok in _read_lines(path, "the attribute names"):
        if len(tok) != 2 or not tok[0].isdigit() or int(tok[0]) != len(names) + 1:
            raise DataError(f"{path}:{lineno}: malformed line (expected '<id> <name>' with ids 1, 2, ...)")
        names.append(tok[1])
    return names


def attribute_text(name: str) -> str:
    """Label text of a CUB attribute name (module docstring)."""
    text = re.sub(r"^has_", "", name).replace("::", " ").replace("_", " ")
    return re.sub(r"\s+", " ", text).strip()


def _image_paths(inner: Path) -> tuple[list[int], list[str]]:
    ids, paths = [], []
    for lineno, tok in _read_lines(inner / "images.txt", "'<image id> <path>' per line"):
        if len(tok) != 2 or not tok[0].isdigit() or ".." in Path(tok[1]).parts or Path(tok[1]).is_absolute():
            raise DataError(f"{inner / 'images.txt'}:{lineno}: malformed line (expected '<image id> <relative path>')")
        ids.append(int(tok[0]))
        paths.append(tok[1])
    return ids, paths


def _split_flags(inner: Path, ids: list[int]) -> np.ndarray:
    flags = {}
    path = inner / "train_test_split.txt"
    for lineno, tok in _read_lines(path, "'<image id> <0|1>' per line"):
        if len(tok) != 2 or not tok[0].isdigit() or tok[1] not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: malformed line (expected '<image id> <1 train | 0 test>')")
        flags[int(tok[0])] = tok[1] == "1"
    missing = [i for i in ids if i not in flags]
    if missing:
        raise DataError(f"{path}: image id {missing[0]} of images.txt has no split ({len(missing)} missing)")
    return np.array([flags[i] for i in ids], dtype=bool)


def _attribute_labels(inner: Path, ids: list[int], k: int, problems: list[str] | None) -> np.ndarray:
    path = inner / "attributes" / "image_attribute_labels.txt"
    row_of = {i: r for r, i in enumerate(ids)}
    out = np.zeros((len(ids), k), dtype=np.int8)  # 0: no line for the pair (reported)
    for lineno, tok in _read_lines(path, "'<image id> <attribute id> <is_present> <certainty> <time>' per line"):
        # some lines of the official file carry an extra field; the first three are what counts
        if len(tok) < 3 or not (tok[0].isdigit() and tok[1].isdigit()) or tok[2] not in ("0", "1"):
            msg = f"{path}:{lineno}: malformed line (expected '<image id> <attribute id> <0|1> ...')"
            if problems is None:
                raise DataError(msg)
            problems.append(msg)
            continue
        img, att = int(tok[0]), int(tok[1])
        if img not in row_of or not 1 <= att <= k:
            msg = f"{path}:{lineno}: image id {img} or attribute id {att} not in images.txt / attributes.txt"
            if problems is None:
                raise DataError(msg)
            problems.append(msg)
            continue
        out[row_of[img], att - 1] = 1 if tok[2] == "1" else -1
    unset = int((out == 0).sum())
    if unset:
        msg = f"{path}: {unset} (image, attribute) pairs have no line; they stay unknown (0)"
        if problems is None:
            raise DataError(msg)
        problems.append(msg)
    return out


def _formatted(root: Path, phase: str) -> tuple[np.ndarray, np.ndarray]:
    paths = {kind: root / f"formatted_{phase}_{kind}.npy" for kind in ("images", "labels")}
    arrays = {}
    for kind, p in paths.items():
        try:
            arrays[kind] = np.load(p, allow_pickle=False)  # a pickle inside would run code: refused
        except FileNotFoundError:
            raise DataError(f"{p}: file not found (Cole et al.'s formatted {phase} {kind})") from None
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{p}: not a readable .npy array without pickles ({str(err).splitlines()[0]})") from None
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 1 or images.dtype.kind not in "US":
        raise DataError(f"{paths['images']}: expected a 1-D array of image paths, got {images.dtype} {images.shape}")
    if labels.ndim != 2 or labels.shape[0] != images.shape[0] or not np.isin(labels, (0, 1, -1)).all():
        raise DataError(f"{paths['labels']}: expected ({images.shape[0]}, C) labels in {{0, 1}}, got {labels.shape}")
    for name in images.tolist():
        if ".." in Path(str(name)).parts or Path(str(name)).is_absolute():
            raise DataError(f"{paths['images']}: image path {name!r} leaves the image directory")
    return images, labels


def _signed(labels: np.ndarray) -> np.ndarray:
    """Cole et al.'s 0/1 labels -> +1 / -1 (a -1 already there stays -1)."""
    return np.where(labels > 0, 1, -1).astype(np.int8)


def load_formatted(root: str | Path, *, image_dir: str | Path = "images", labels_file: str | Path = "labels.txt",
                   split: str = "train", problems: list[str] | None = None) -> MultiLabelSplit:
    """One split ("train" or "val") of Cole et al.'s formatted files at ``root``.

    ``image_dir`` (relative to ``root`` or absolute) holds the images named in
    ``formatted_<split>_images.npy``; ``labels_file`` (one name per line, column order)
    names the labels. 0/1 labels become -1/+1.
    """
    if split not in ("train", "val"):
        raise UsageError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    images, labels = _formatted(root, split)
    lf = Path(labels_file) if Path(labels_file).is_absolute() else root / labels_file
    try:
        names = [line.strip() for line in lf.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{lf}: file not found (expected the label names, one per line)") from None
    if len(names) != labels.shape[1]:
        raise DataError(f"{lf}: {len(names)} label names for {labels.shape[1]} label columns")
    image_root = Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir
    return MultiLabelSplit([str(x) for x in images.tolist()], _signed(labels), names, image_root,
                           f"formatted/{split}")


def load_cub(root: str | Path, split: str = "train", *, label_text: str = "clean",
             problems: list[str] | None = None) -> MultiLabelSplit:
    """One CUB split: "train" (``is_train = 1``) or "test" (the rest; Cole et al.'s "val").

    Args:
        root: see the module docstring (official or formatted layout).
        label_text: "clean" (:func:`attribute_text`) or "raw" (the names of attributes.txt).
        problems: collect label-file defects here instead of raising.
    """
    if split not in ("train", "test"):
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    if label_text not in ("clean", "raw"):
        raise UsageError(f"label_text must be 'clean' or 'raw', got {label_text!r}")
    root = Path(root)
    inner = find_cub_root(root)
    formatted_root = next((d for d in (root, inner.parent, inner) if (d / "formatted_train_labels.npy").is_file()), None)
    if formatted_root is not None and not _has_official(inner):  # formatted files only: names next to them
        names = cub_attribute_names(_attributes_file(formatted_root, formatted_root))
        image_root = formatted_root / _INNER / _INNER / "images"
    else:
        names = cub_attribute_names(_attributes_file(root, inner))
        image_root = inner / "images"
    text = [attribute_text(n) for n in names] if label_text == "clean" else list(names)
    if formatted_root is not None:
        images, labels = _formatted(formatted_root, "train" if split == "train" else "val")
        if labels.shape[1] != len(names):
            raise DataError(f"{formatted_root}: {labels.shape[1]} label columns for {len(names)} attribute names")
        return MultiLabelSplit([str(x) for x in images.tolist()], _signed(labels), text, image_root, f"cub/{split}")
    ids, paths = _image_paths(inner)
    train = _split_flags(inner, ids)
    targets = _attribute_labels(inner, ids, len(names), problems)
    keep = train if split == "train" else ~train
    rows = np.flatnonzero(keep)
    return MultiLabelSplit([paths[r] for r in rows], targets[rows], text, image_root, f"cub/{split}")
