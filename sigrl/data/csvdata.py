"""The generic dataset format: a label list plus CSV or JSON-lines split files.

This is the format users bring their own data in, and the one the embedded synthetic
world writes. Readers and writers here share it exactly.

Layout of a dataset root::

    labels.txt      label vocabulary, one name per line; line order = column order.
                    UTF-8 (a BOM, CRLF line ends and blank lines are tolerated).
                    Optional: without it the vocabulary is the sorted union of every
                    name used in the split files (and unseen.txt).
    train.csv       required  (or train.jsonl)
    test.csv        required  (or test.jsonl)
    val.csv         optional  (or val.jsonl)
    unseen.txt      optional: labels never shown to training (zero-shot split), one per
                    line; each must be in labels.txt.

CSV split file: a header row with (at least) the columns ``image`` and ``labels``;
other columns are ignored::

    image,labels
    images/0001.png,dog|beach
    images/0002.png,cat|-dog          # "-dog": dog is a known negative
    images/0003.png,                  # no positive

* ``image``: path relative to the dataset root, forward slashes (backslashes are
  converted); absolute paths and ``..`` escapes are refused.
* ``labels``: ``|``-separated label names. A name prefixed with ``-`` is a known
  negative (-1). Names not listed are negative (-1) by default, or unknown (0) when
  read with ``unlisted="unknown"`` (partial labels: list positives and known negatives).

JSON-lines split file (``.jsonl``): one object per non-blank line,
``{"image": "images/0002.png", "labels": ["cat", "-dog"]}`` with the same meaning.

A label name may not be empty, contain ``|`` or a line break, start with ``-`` or
have surrounding whitespace. A name not in
labels.txt, a name both positive and negative in one row, a row without the right
fields or a path escaping the root is an error naming ``file:line``
(:class:`~sigrl.errors.DataError`; paths: :class:`~sigrl.errors.UnsafeFileError`).
Loaders accept ``problems=[]`` to collect such rows as messages and skip them instead
(``sigrl data check`` does this).

:func:`load_csv_dataset` returns a :class:`~sigrl.data.base.ZeroShotDataset`:
``seen = labels − unseen`` (labels.txt order), train restricted to the seen labels,
test (and val) with columns ``seen + unseen`` (unseen in unseen.txt order).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, SigrlError, UsageError
from ..safeio import atomic_write_text, safe_relpath
from .base import MultiLabelSplit, ZeroShotDataset

__all__ = [
    "read_label_list",
    "write_label_list",
    "find_split_file",
    "load_csv_split",
    "load_csv_dataset",
    "write_csv_split",
    "write_csv_dataset",
]

SPLITS = ("train", "test", "val")
_UNLISTED = {"negative": -1, "unknown": 0}


def _read_text(path: Path, what: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected {what})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory (expected {what})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (expected {what} in UTF-8)") from None


def _check_name(name: str, where: str) -> None:
    if not name:
        raise DataError(f"{where}: empty label name")
    if "|" in name:
        raise DataError(f"{where}: label name {name!r} contains '|' (the separator of the labels column)")
    if name.startswith("-"):
        raise DataError(f"{where}: label name {name!r} starts with '-' (that prefix marks a negative)")
    if name != name.strip() or len(name.splitlines()) > 1:
        raise DataError(f"{where}: label name {name!r} has surrounding whitespace or a line break "
                        "(it would not read back the same)")


def read_label_list(path: str | Path, *, what: str = "a label list, one name per line") -> list[str]:
    """Names in ``path``, one per line, in file order.

    Surrounding whitespace, a UTF-8 BOM, CRLF and blank lines are tolerated. Duplicates
    and names that cannot be written in a split file (see module docstring) raise
    :class:`DataError` naming ``file:line``.
    """
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path, what).splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        _check_name(name, f"{path}:{lineno}")
        if name in seen:
            raise DataError(f"{path}:{lineno}: label {name!r} listed twice (first on line {seen[name]})")
        seen[name] = lineno
        names.append(name)
    return names


def write_label_list(path: str | Path, names: list[str]) -> Path:
    """Write ``names`` one per line (atomic); the reader of :func:`read_label_list`."""
    for i, name in enumerate(names, 1):
        _check_name(str(name), f"label {i} of {path}")
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: label names must be unique")
    return atomic_write_text(path, "".join(f"{n}\n" for n in names))


@dataclass
class _Row:
    image: str
    pos: list[str]
    neg: list[str]
    line: int


def _split_names(tokens, where: str) -> tuple[list[str], list[str]]:
    pos, neg = [], []
    for tok in tokens:
        if not isinstance(tok, str):
            raise DataError(f"{where}: label {tok!r} is not a string")
        tok = tok.strip()
        if not tok:
            continue
        if tok.startswith("-"):
            name = tok[1:].strip()
            if not name:
                raise DataError(f"{where}: '-' without a label name")
            _check_name(name, where)  # "--x": a name starting with '-' cannot be a label
            neg.append(name)
        else:
            _check_name(tok, where)  # e.g. "a|b" inside a JSON list
            pos.append(tok)
    both = set(pos) & set(neg)
    if both:
        raise DataError(f"{where}: label {sorted(both)[0]!r} is both positive and negative")
    return pos, neg


def _parse_csv(path: Path, text: str, problems: list[str] | None) -> list[_Row]:
    rows: list[_Row] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    try:
        for record in reader:
            lineno = reader.line_num
            if not record or all(not f.strip() for f in record):
                continue
            if header is None:
                header = [h.strip() for h in record]
                missing = [c for c in ("image", "labels") if c not in header]
                if missing:
                    raise DataError(
                        f"{path}:{lineno}: header must have the columns 'image' and 'labels' "
                        f"(missing {', '.join(missing)}; got {','.join(header)})"
                    )
                i_img, i_lab = header.index("image"), header.index("labels")
                continue
            where = f"{path}:{lineno}"
            try:
                if len(record) != len(header):
                    raise DataError(
                        f"{where}: malformed line: {len(record)} fields, the header has {len(header)}"
                    )
                image = safe_relpath(record[i_img].strip(), where=where)
                pos, neg = _split_names(record[i_lab].split("|"), where)
                rows.append(_Row(image, pos, neg, lineno))
            except SigrlError as err:
                if problems is None:
                    raise
                problems.append(str(err))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    if header is None:
        raise DataError(f"{path}: empty file (expected a header 'image,labels' and one row per image)")
    return rows


def _parse_jsonl(path: Path, text: str, problems: list[str] | None) -> list[_Row]:
    rows: list[_Row] = []
    # Lines end at \n, \r\n or \r (never inside a JSON string, where they must be
    # escaped); str.splitlines() would also cut at U+2028, U+0085 ... which JSON strings
    # may hold unescaped (json.dumps(ensure_ascii=False) writes them raw).
    for lineno, line in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: malformed line: not JSON ({err.msg})") from None
            except RecursionError:  # "[[[[..." nested deeper than the parser's stack
                raise DataError(f"{where}: malformed line: JSON nested too deeply") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                raise DataError(f'{where}: malformed line: expected {{"image": "...", "labels": [...]}}')
            labels = obj.get("labels", [])
            if isinstance(labels, str):
                labels = labels.split("|")
            if not isinstance(labels, list):
                raise DataError(f"{where}: 'labels' must be a list of label names")
            image = safe_relpath(obj["image"].strip(), where=where)
            pos, neg = _split_names(labels, where)
            rows.append(_Row(image, pos, neg, lineno))
        except SigrlError as err:
            if problems is None:
                raise
            problems.append(str(err))
    return rows


def _parse(path: Path, problems: list[str] | None) -> list[_Row]:
    text = _read_text(path, "a split file (CSV 'image,labels' or JSON lines)")
    if path.suffix.lower() == ".jsonl":
        return _parse_jsonl(path, text, problems)
    return _parse_csv(path, text, problems)


def _infer_labels(row_lists) -> list[str]:
    names: set[str] = set()
    for rows in row_lists:
        for r in rows:
            names.update(r.pos)
            names.update(r.neg)
    for name in names:
        _check_name(name, "label inferred from the split files")
    return sorted(names)


def _build(path: Path, rows: list[_Row], labels: list[str], unlisted: str, root: Path,
           name: str, problems: list[str] | None) -> MultiLabelSplit:
    col = {n: i for i, n in enumerate(labels)}
    fill = _UNLISTED[unlisted]
    targets = np.full((len(rows), len(labels)), fill, dtype=np.int8)
    keep = np.ones(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        unknown = [n for n in r.pos + r.neg if n not in col]
        if unknown:
            msg = (f"{path}:{r.line}: label {unknown[0]!r} is not in the label list "
                   f"({len(labels)} labels{', from labels.txt' if (root / 'labels.txt').is_file() else ''})")
            if problems is None:
                raise DataError(msg)
            problems.append(msg)
            keep[i] = False
            continue
        targets[i, [col[n] for n in r.neg]] = -1
        targets[i, [col[n] for n in r.pos]] = 1
    images = [r.image for r, k in zip(rows, keep) if k]
    return MultiLabelSplit(images, targets[keep], list(labels), root, name)


def _check_unlisted(unlisted: str) -> None:
    if unlisted not in _UNLISTED:
        raise UsageError(f"unlisted must be 'negative' or 'unknown', got {unlisted!r}")


def load_csv_split(path: str | Path, labels: list[str] | None = None, *, root: str | Path | None = None,
                   unlisted: str = "negative", problems: list[str] | None = None) -> MultiLabelSplit:
    """Read one split file (``.csv`` or ``.jsonl``) into a :class:`MultiLabelSplit`.

    Args:
        path: the split file.
        labels: the column order. ``None``: ``root/labels.txt`` if it exists, else the
            sorted union of the names used in this file.
        root: directory image paths are relative to (default: the file's directory).
        unlisted: "negative" (default) → names not listed are -1; "unknown" → 0.
        problems: if a list, bad rows are appended to it as messages and skipped;
            otherwise the first bad row raises.

    Returns:
        split with ``images`` (relative POSIX paths), ``targets`` (N, C) int8 in {1,-1,0}.
    """
    _check_unlisted(unlisted)
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rows = _parse(path, problems)
    if labels is None:
        lab_file = root / "labels.txt"
        labels = read_label_list(lab_file) if lab_file.is_file() else _infer_labels([rows])
    else:
        labels = [str(n) for n in labels]
        if len(set(labels)) != len(labels):
            raise UsageError("labels must be unique")
    return _build(path, rows, labels, unlisted, root, f"{root.name}/{path.stem}", problems)


def find_split_file(root: str | Path, split: str) -> Path | None:
    """``root/<split>.csv`` or ``root/<split>.jsonl`` (None if neither; both → DataError)."""
    root = Path(root)
    found = [p for p in (root / f"{split}.csv", root / f"{split}.jsonl") if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{root}: both {split}.csv and {split}.jsonl exist (keep one)")
    return found[0] if found else None


def load_csv_dataset(root: str | Path, *, unlisted: str = "negative",
                     problems: list[str] | None = None) -> ZeroShotDataset:
    """Read a dataset root in the generic format (module docstring) as a ZeroShotDataset.

    Raises:
        DataError: ``root`` missing, train or test split file missing, a label of
            unseen.txt not in labels.txt, or (without ``problems``) any bad row.
    """
    _check_unlisted(unlisted)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a dataset root with labels.txt, train.csv, test.csv)")
    files = {s: find_split_file(root, s) for s in SPLITS}
    for s in ("train", "test"):
        if files[s] is None:
            raise DataError(f"{root / (s + '.csv')}: file not found (required split; {s}.jsonl also accepted)")
    rows = {s: _parse(p, problems) for s, p in files.items() if p is not None}
    unseen_file = root / "unseen.txt"
    unseen = read_label_list(unseen_file) if unseen_file.is_file() else []
    lab_file = root / "labels.txt"
    if lab_file.is_file():
        labels = read_label_list(lab_file)
        missing = [n for n in unseen if n not in set(labels)]
        if missing:
            raise DataError(f"{unseen_file}: label {missing[0]!r} is not in {lab_file}")
    else:
        labels = sorted(set(_infer_labels(rows.values())) | set(unseen))
    unseen_set = set(unseen)
    seen = [n for n in labels if n not in unseen_set]
    out = {}
    for s, p in files.items():
        if p is None:
            continue
        split = _build(p, rows[s], labels, unlisted, root, f"{root.name}/{s}", problems)
        out[s] = split.select_labels(seen if s == "train" else seen + unseen)
    return ZeroShotDataset(out["train"], out["test"], seen, list(unseen), out.get("val"))


def _relative_image(split: MultiLabelSplit, i: int) -> str:
    p = Path(split.images[i])
    if p.is_absolute():
        for base in (split.root, split.root.resolve()):
            try:
                p = p.relative_to(base)
                break
            except ValueError:
                continue
        else:
            raise UsageError(f"image {split.images[i]} is not under the split root {split.root}")
    rel = safe_relpath(p.as_posix())
    if rel != rel.strip():
        raise UsageError(f"image path {rel!r} starts or ends with whitespace, which readers strip; rename the file")
    return rel


def write_csv_split(path: str | Path, split: MultiLabelSplit, *, unlisted: str = "negative") -> Path:
    """Write ``split`` as a ``.csv`` (or ``.jsonl`` by suffix) split file, atomically.

    With ``unlisted="negative"`` only positives are written (every other entry reads
    back as -1); a split with unknown (0) entries then raises UsageError. With
    ``unlisted="unknown"`` positives and ``-negatives`` are written and 0 entries are
    left out, so the file reads back to the same targets with ``unlisted="unknown"``.
    """
    _check_unlisted(unlisted)
    path = Path(path)
    for i, n in enumerate(split.labels):
        try:
            _check_name(n, f"label {i} of split {split.name or path}")
        except DataError as err:
            raise UsageError(str(err)) from None
    t = split.targets
    if unlisted == "negative" and (t == 0).any():
        raise UsageError(
            f"{path}: split {split.name!r} has unknown (0) targets; write it with unlisted='unknown'"
        )
    names = np.asarray(split.labels, dtype=object)
    jsonl = path.suffix.lower() == ".jsonl"
    buf = io.StringIO(newline="")
    writer = None if jsonl else csv.writer(buf, lineterminator="\n")
    # csv quotes a field holding "\n" but not one holding a lone "\r" when the line
    # terminator is "\n"; readers end the line there. Such rows are written fully quoted.
    quoted = None if jsonl else csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    if writer:
        writer.writerow(["image", "labels"])
    for i in range(len(split)):
        row = t[i]
        labs = list(names[row == 1])
        if unlisted == "unknown":
            labs += ["-" + n for n in names[row == -1]]
        image = _relative_image(split, i)
        if jsonl:
            buf.write(json.dumps({"image": image, "labels": labs}, ensure_ascii=False) + "\n")
        else:
            fields = [image, "|".join(labs)]
            (quoted if any("\r" in f for f in fields) else writer).writerow(fields)
    return atomic_write_text(path, buf.getvalue())


def write_csv_dataset(root: str | Path, dataset: ZeroShotDataset, *, unlisted: str = "negative",
                      suffix: str = ".csv") -> Path:
    """Write ``dataset`` as a dataset root: labels.txt (seen + unseen), unseen.txt (if
    any), train/test/val split files. :func:`load_csv_dataset` reads it back."""
    root = Path(root)
    if suffix not in (".csv", ".jsonl"):
        raise UsageError(f"suffix must be '.csv' or '.jsonl', got {suffix!r}")
    write_label_list(root / "labels.txt", list(dataset.seen) + list(dataset.unseen))
    if dataset.unseen:
        write_label_list(root / "unseen.txt", list(dataset.unseen))
    elif (root / "unseen.txt").exists():
        (root / "unseen.txt").unlink()
    for s in SPLITS:
        split = getattr(dataset, s)
        other = root / f"{s}{'.jsonl' if suffix == '.csv' else '.csv'}"
        if other.exists():
            other.unlink()
        if split is not None:
            write_csv_split(root / f"{s}{suffix}", split, unlisted=unlisted)
    return root
