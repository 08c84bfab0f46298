"""NUS-WIDE for the zero-shot protocol (925 seen tags / 81 unseen concepts, docs/design.md §4).

Labels. ``unseen`` = the 81 human-annotated concepts (``Concepts81.txt``, file order).
``seen`` = the 1000 Flickr tags of ``TagList1k.txt`` minus those that are among the 81
concepts (75 are; computer, fire, map, swimmers, tattoo, whales are not), i.e. 925 tags
in TagList1k order; a ``Concepts925.txt`` is used instead when present (it must hold
the same set). GZSL columns = ``seen + unseen`` = 1006.

Targets. Seen columns come from the 1k-tag vector (1 → +1, 0 → -1); unseen columns
from the human labels. The tags that are concepts are never used as tag columns: in
the 1k-tag vector they are "unknown" to training, which sees the 925 seen columns only.
``train`` drops images with no seen positive; ``test`` keeps every image.

Two on-disk layouts are read (``layout="auto"`` picks the one present).

**official** (the NUS-WIDE distribution)::

    ImageList/Imagelist.txt              every image, one path per line (Windows style,
                                         e.g. C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg)
    ImageList/TrainImagelist.txt         the train images (same path style)
    ImageList/TestImagelist.txt          the test images
    NUS_WID_Tags/TagList1k.txt           the 1000 tags        (or TagList1k.txt at the root)
    NUS_WID_Tags/AllTags1k.txt           one row of 1000 0/1 values per line of Imagelist
    ConceptsList/Concepts81.txt          the 81 concepts      (or Concepts81.txt at the root)
    AllLabels/Labels_<concept>.txt       one 0/1 per line per line of Imagelist
                                         (Groundtruth/AllLabels/ is accepted too)
    Flickr/<folder>/<file>               the images

Only the last two path components of a list entry are used: ``Flickr/<folder>/<file>``.

**biam** (the BiAM/MKT derivative)::

    img_names.pkl, test_img_names.pkl    pickles of {"img_names": [...]} (root or features/);
                                         loaded with the restricted unpickler
    Concepts81.txt, Concepts925.txt      (or TagList1k.txt to derive the 925)
    features/nus_wide_train.h5           per image name: "<name>-labels" (925 seen values)
    features/nus_wide_test.h5            "<name>-labels" (925, or 1006 = 925 seen + 81)
                                         and "<name>-labels_81" (81 unseen values)
    label_emb.pt                         optional, see load_label_embeddings
    Flickr/<folder>/<file>               the images

An image name ``<folder>_<nnnn>_<flickrid>.jpg`` stands for
``Flickr/<folder>/<nnnn>_<flickrid>.jpg``; folder names may themselves hold underscores
(``airport_terminal_0001_1.jpg`` → ``Flickr/airport_terminal/0001_1.jpg``), so the name
is split at its last two underscores.

Label values in the h5 files: +1/-1/0 are read as present/absent/unknown. If a file
holds no -1 at all it is a 0/1 file and 0 means absent (``zero_means="auto"``; force
with ``"absent"`` or ``"unknown"``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError, SigrlError, UsageError
from ..safeio import load_torch_weights_only, safe_load_pickle, safe_relpath
from .base import MultiLabelSplit, ZeroShotDataset
from .csvdata import read_label_list

__all__ = [
    "N_SEEN",
    "N_UNSEEN",
    "name_to_relpath",
    "relpath_to_name",
    "read_image_names",
    "find_file",
    "nuswide_labels",
    "detect_layout",
    "load_nuswide",
    "load_label_embeddings",
]

N_SEEN, N_UNSEEN = 925, 81

TAGLIST = ("NUS_WID_Tags/TagList1k.txt", "TagList1k.txt")
CONCEPTS81 = ("ConceptsList/Concepts81.txt", "Concepts81.txt")
CONCEPTS925 = ("Concepts925.txt", "ConceptsList/Concepts925.txt")
ALLTAGS = ("NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt")
IMAGELIST = ("ImageList/Imagelist.txt",)
TRAINLIST = ("ImageList/TrainImagelist.txt",)
TESTLIST = ("ImageList/TestImagelist.txt",)
LABEL_DIRS = ("AllLabels", "Groundtruth/AllLabels")
TRAIN_NAMES = ("img_names.pkl", "features/img_names.pkl")
TEST_NAMES = ("test_img_names.pkl", "features/test_img_names.pkl")
TRAIN_H5 = ("features/nus_wide_train.h5", "nus_wide_train.h5")
TEST_H5 = ("features/nus_wide_test.h5", "nus_wide_test.h5")

_NAME = re.compile(r"^(?P<folder>.+)_(?P<file>\d+_\d+\.(?:jpe?g|png|gif|bmp))$", re.IGNORECASE)


def find_file(root: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first of ``root/<candidate>`` that is a file, else None."""
    for c in candidates:
        p = Path(root) / c
        if p.is_file():
            return p
    return None


def _require(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    p = find_file(root, candidates)
    if p is None:
        also = f" (or {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
        raise DataError(f"{Path(root) / candidates[0]}: file not found{also}; expected {what}")
    return p


def name_to_relpath(name: str, *, where: str | None = None) -> str:
    """``"<folder>_<nnnn>_<id>.jpg"`` → ``"Flickr/<folder>/<nnnn>_<id>.jpg"``.

    Raises DataError when the name does not have that shape (``where`` = "file" or
    "file:item" for the message).
    """
    m = _NAME.match(name) if isinstance(name, str) else None
    if not m:
        raise DataError(
            f"{where + ': ' if where else ''}image name {name!r} is not of the form "
            "<folder>_<nnnn>_<flickrid>.jpg"
        )
    return safe_relpath(f"Flickr/{m['folder']}/{m['file']}", where=where)


def relpath_to_name(relpath: str) -> str:
    """Inverse of :func:`name_to_relpath`: ``Flickr/<folder>/<file>`` → ``<folder>_<file>``."""
    parts = relpath.replace("\\", "/").split("/")
    return f"{parts[-2]}_{parts[-1]}"


def read_image_names(path: str | Path) -> list[str]:
    """The list of image names in a BiAM-style pickle (``{"img_names": [...]}`` or a list).

    Loaded with :func:`~sigrl.safeio.safe_load_pickle`: a pickle that asks for any
    global raises UnsafeFileError.
    """
    path = Path(path)
    obj = safe_load_pickle(path)
    names = obj.get("img_names") if isinstance(obj, dict) else obj
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a pickle of {{'img_names': [str, ...]}} or a list of names")
    return list(names)


def nuswide_labels(root: str | Path) -> tuple[list[str], list[str]]:
    """``(seen, unseen)`` label names of a NUS-WIDE root (see module docstring)."""
    root = Path(root)
    unseen_file = _require(root, CONCEPTS81, "the 81 NUS-WIDE concepts, one per line")
    unseen = read_label_list(unseen_file)
    c925 = find_file(root, CONCEPTS925)
    tags_file = find_file(root, TAGLIST)
    tag_seen = None
    if tags_file is not None:
        tags = read_label_list(tags_file)
        concept_set = set(unseen)
        tag_seen = [t for t in tags if t not in concept_set]
    if c925 is not None:
        seen = read_label_list(c925)
        if set(seen) & set(unseen):
            raise DataError(f"{c925}: label {sorted(set(seen) & set(unseen))[0]!r} is also in {unseen_file}")
        if tag_seen is not None and set(seen) != set(tag_seen):
            raise DataError(f"{c925}: does not hold the tags of {tags_file} minus the concepts of {unseen_file}")
        return seen, unseen
    if tag_seen is None:
        raise DataError(
            f"{root / TAGLIST[0]}: file not found (nor {root / TAGLIST[1]}, {root / CONCEPTS925[0]}); "
            "expected the 1000 NUS-WIDE tags to derive the seen labels"
        )
    return tag_seen, unseen


def detect_layout(root: str | Path) -> str:
    """"official" (ImageList/Imagelist.txt present) or "biam" (test_img_names.pkl present)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a NUS-WIDE root)")
    if find_file(root, IMAGELIST):
        return "official"
    if find_file(root, TEST_NAMES):
        return "biam"
    raise DataError(
        f"{root}: no NUS-WIDE layout found (expected ImageList/Imagelist.txt for the official "
        "layout or test_img_names.pkl for the BiAM/MKT layout)"
    )


# ------------------------------------------------------------------------- official


def _list_key(entry: str) -> tuple[str, str] | None:
    parts = [p for p in entry.strip().replace("\\", "/").split("/") if p]
    if len(parts) < 2:
        return None
    return parts[-2], parts[-1]


def _read_image_list(path: Path) -> list[tuple[str, str]]:
    keys = []
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8 text (expected one image path per line)") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key = _list_key(line)
        if key is None:
            raise DataError(f"{path}:{lineno}: malformed line {line.strip()!r} (expected <folder>\\<file>.jpg)")
        safe_relpath(f"Flickr/{key[0]}/{key[1]}", where=f"{path}:{lineno}")
        keys.append(key)
    return keys


def _read_01(path: Path, ncols: int, nrows: int, what: str, chunk_bytes: int = 32 * 2**20) -> np.ndarray:
    """Whitespace-separated 0/1 values, ``nrows`` lines of ``ncols`` → (nrows, ncols) int8.

    Vectorised over chunks of whole lines; blank lines are skipped. A wrong character,
    a multi-digit value or a line with the wrong number of values raises DataError
    naming ``file:line``.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    out = np.empty((nrows, ncols), dtype=np.int8)
    row = 0
    line0 = 1  # line number of the first line of the chunk
    start = 0
    while start < len(data):
        stop = data.find(b"\n", min(start + chunk_bytes, len(data)) - 1)
        stop = len(data) if stop < 0 else stop + 1
        raw = np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start)
        nl = raw == 10
        is_digit = (raw == 48) | (raw == 49)
        ok = is_digit | nl | (raw == 32) | (raw == 9) | (raw == 13)
        adjacent = np.zeros_like(is_digit)
        adjacent[1:] = is_digit[1:] & is_digit[:-1]  # "10", "11": not a 0/1 value
        bad = ~ok | adjacent
        line_of = np.cumsum(nl, dtype=np.int64) - nl  # line index (in chunk) of each byte
        if bad.any():
            line = line0 + int(line_of[np.flatnonzero(bad)[0]])
            raise DataError(f"{path}:{line}: malformed line (expected {what}: 0/1 values separated by whitespace)")
        digit_line = line_of[is_digit]
        n_lines_chunk = int(nl.sum()) + (0 if raw[-1] == 10 else 1)
        counts = np.bincount(digit_line, minlength=n_lines_chunk)
        nonblank = np.flatnonzero(counts)
        wrong = nonblank[counts[nonblank] != ncols]
        if wrong.size:
            line = int(wrong[0])
            raise DataError(
                f"{path}:{line0 + line}: malformed line: {int(counts[line])} values, expected {ncols} ({what})"
            )
        k = nonblank.size
        if row + k > nrows:
            raise DataError(f"{path}: more than {nrows} lines, expected one per image of Imagelist.txt")
        out[row : row + k] = (raw[is_digit] - 48).astype(np.int8).reshape(k, ncols)
        row += k
        line0 += int(nl.sum())
        start = stop
    if row != nrows:
        raise DataError(f"{path}: {row} lines, expected {nrows} (one per image of Imagelist.txt)")
    return out


def _load_official(root: Path, image_root: Path, seen: list[str], unseen: list[str]) -> ZeroShotDataset:
    all_keys = _read_image_list(_require(root, IMAGELIST, "the list of all NUS-WIDE images"))
    index: dict[tuple[str, str], int] = {}
    for i, k in enumerate(all_keys):
        if k in index:
            raise DataError(f"{root / IMAGELIST[0]}:{i + 1}: image {k[0]}/{k[1]} listed twice")
        index[k] = i
    n_all = len(all_keys)
    tags_file = _require(root, TAGLIST, "the 1000 NUS-WIDE tags, one per line")
    tags = read_label_list(tags_file)
    tag_col = {t: i for i, t in enumerate(tags)}
    missing = [s for s in seen if s not in tag_col]
    if missing:
        raise DataError(f"{tags_file}: seen label {missing[0]!r} is not a tag")
    alltags_file = _require(root, ALLTAGS, "the 0/1 tag matrix, one row per image")
    tag_matrix = _read_01(alltags_file, len(tags), n_all, f"{len(tags)} tag values per image")
    seen_t = np.where(tag_matrix[:, [tag_col[s] for s in seen]] == 1, 1, -1).astype(np.int8)
    del tag_matrix

    label_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if label_dir is None:
        raise DataError(f"{root / LABEL_DIRS[0]}: directory not found; expected Labels_<concept>.txt files")
    unseen_t = np.empty((n_all, len(unseen)), dtype=np.int8)
    for j, concept in enumerate(unseen):
        f = label_dir / f"Labels_{concept}.txt"
        if not f.is_file():
            raise DataError(f"{f}: file not found (expected one 0/1 per image of Imagelist.txt)")
        unseen_t[:, j] = np.where(_read_01(f, 1, n_all, "one 0/1 value per line")[:, 0] == 1, 1, -1)

    images = [f"Flickr/{a}/{b}" for a, b in all_keys]

    def rows(list_candidates, what):
        path = _require(root, list_candidates, what)
        out = []
        for lineno, k in enumerate(_read_image_list(path), 1):
            if k not in index:
                raise DataError(f"{path}: image {k[0]}/{k[1]} (entry {lineno}) is not in {root / IMAGELIST[0]}")
            out.append(index[k])
        return np.asarray(out, dtype=np.int64)

    tr = rows(TRAINLIST, "the list of NUS-WIDE train images")
    te = rows(TESTLIST, "the list of NUS-WIDE test images")
    tr = tr[(seen_t[tr] == 1).any(axis=1)]
    train = MultiLabelSplit([images[i] for i in tr], seen_t[tr], list(seen), image_root, "nuswide/train")
    test = MultiLabelSplit(
        [images[i] for i in te], np.concatenate([seen_t[te], unseen_t[te]], axis=1),
        list(seen) + list(unseen), image_root, "nuswide/test",
    )
    return ZeroShotDataset(train, test, list(seen), list(unseen))


# ----------------------------------------------------------------------------- biam


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None


def _h5_rows(h5, path: Path, names: list[str], suffix: str, widths: tuple[int, ...],
             problems: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(names), widths[0]), dtype=np.int8)
    ok = np.ones(len(names), dtype=bool)
    for i, name in enumerate(names):
        key = f"{name}{suffix}"
        try:
            try:
                node = h5[key]
            except KeyError:
                raise DataError(f"{path}: no dataset '{key}' for image {name} (listed in the names pickle)") from None
            if not hasattr(node, "dtype"):  # an HDF5 group (or link) where a label vector belongs
                raise DataError(f"{path}: '{key}' is not a dataset (expected the label vector of image {name})")
            try:
                v = np.asarray(node[()]).reshape(-1)
            except (OSError, TypeError, ValueError) as err:
                raise DataError(f"{path}: cannot read '{key}' ({err})") from None
            if v.size not in widths:
                raise DataError(f"{path}: '{key}' has {v.size} values, expected {' or '.join(map(str, widths))}")
            v = v[: widths[0]]
            if not np.isin(v, (-1, 0, 1)).all():
                raise DataError(f"{path}: '{key}' holds values other than 1, -1, 0")
            out[i] = v
        except SigrlError as err:
            if problems is None:
                raise
            problems.append(str(err))
            ok[i] = False
    return out, ok


def _zero_rule(arrays: list[np.ndarray], zero_means: str) -> list[np.ndarray]:
    if zero_means == "auto":
        zero_means = "unknown" if any((a == -1).any() for a in arrays) else "absent"
    if zero_means == "absent":
        return [np.where(a == 0, -1, a).astype(np.int8) for a in arrays]
    return arrays


def _names_split(root: Path, candidates, problems, what) -> tuple[Path, list[str], list[str]]:
    path = _require(root, candidates, what)
    names = read_image_names(path)
    kept, rel = [], []
    for i, n in enumerate(names):
        try:
            rel.append(name_to_relpath(n, where=f"{path}[{i}]"))
            kept.append(n)
        except SigrlError as err:
            if problems is None:
                raise
            problems.append(str(err))
    return path, kept, rel


def _load_biam(root: Path, image_root: Path, seen: list[str], unseen: list[str], zero_means: str,
               problems: list[str] | None) -> ZeroShotDataset:
    _, tr_names, tr_rel = _names_split(root, TRAIN_NAMES, problems, "the pickled train image names")
    _, te_names, te_rel = _names_split(root, TEST_NAMES, problems, "the pickled test image names")
    ns, nu = len(seen), len(unseen)
    p_tr = _require(root, TRAIN_H5, "the train labels (HDF5)")
    p_te = _require(root, TEST_H5, "the test labels (HDF5)")
    with _open_h5(p_tr) as h5:
        tr_seen, tr_ok = _h5_rows(h5, p_tr, tr_names, "-labels", (ns, ns + nu), problems)
    with _open_h5(p_te) as h5:
        te_seen, ok1 = _h5_rows(h5, p_te, te_names, "-labels", (ns, ns + nu), problems)
        te_unseen, ok2 = _h5_rows(h5, p_te, te_names, "-labels_81", (nu,), problems)
    tr_seen, = _zero_rule([tr_seen[tr_ok]], zero_means)
    te_ok = ok1 & ok2
    te_seen, te_unseen = _zero_rule([te_seen[te_ok], te_unseen[te_ok]], zero_means)
    tr_rel = [r for r, k in zip(tr_rel, tr_ok) if k]
    te_rel = [r for r, k in zip(te_rel, te_ok) if k]
    keep = (tr_seen == 1).any(axis=1)
    train = MultiLabelSplit([r for r, k in zip(tr_rel, keep) if k], tr_seen[keep], list(seen), image_root,
                            "nuswide/train")
    test = MultiLabelSplit(te_rel, np.concatenate([te_seen, te_unseen], axis=1), list(seen) + list(unseen),
                           image_root, "nuswide/test")
    return ZeroShotDataset(train, test, list(seen), list(unseen))


def load_nuswide(root: str | Path, *, layout: str = "auto", image_root: str | Path | None = None,
                 zero_means: str = "auto", problems: list[str] | None = None) -> ZeroShotDataset:
    """Load NUS-WIDE as a zero-shot dataset (925 seen / 81 unseen on the real files).

    Args:
        root: the NUS-WIDE directory (either layout, see module docstring).
        layout: "auto", "official" or "biam".
        image_root: where ``Flickr/`` lives (default ``root``).
        zero_means: biam layout only — how a 0 in the h5 label vectors is read.
        problems: if a list, per-image defects (bad names, names missing from the h5)
            are appended and those images skipped; otherwise they raise DataError.

    Returns:
        ZeroShotDataset: train (seen columns, images with ≥1 seen positive) and test
        (seen + unseen columns, all images). Image paths are ``Flickr/<folder>/<file>``.
    """
    root = Path(root)
    if layout not in ("auto", "official", "biam"):
        raise UsageError(f"layout must be 'auto', 'official' or 'biam', got {layout!r}")
    if zero_means not in ("auto", "absent", "unknown"):
        raise UsageError(f"zero_means must be 'auto', 'absent' or 'unknown', got {zero_means!r}")
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a NUS-WIDE root)")
    seen, unseen = nuswide_labels(root)
    image_root = Path(image_root) if image_root is not None else root
    if layout == "official":
        return _load_official(root, image_root, seen, unseen)
    return _load_biam(root, image_root, seen, unseen, zero_means, problems)


def load_label_embeddings(root: str | Path):
    """``label_emb.pt`` of the BiAM/MKT layout, loaded with ``weights_only=True``
    (whatever object it holds: usually a tensor or a dict of tensors)."""
    return load_torch_weights_only(Path(root) / "label_emb.pt")
