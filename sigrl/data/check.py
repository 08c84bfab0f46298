"""``sigrl data check``: is a dataset on disk complete and readable?

:func:`check_dataset` finds the layout of a dataset root (nuswide, voc, coco, csv),
loads every list and label file it needs with the loaders of :mod:`sigrl.data` in
lenient mode (a bad row becomes a problem, not a crash), then checks the listed image
files: each must exist and pass ``PIL.Image.open(path).verify()`` (header and, for
PNG, chunk checksums; it does not decode JPEG data, so a truncated JPEG passes). With
``decode=True`` (``--decode``) every image is also fully decoded, which finds truncated
JPEGs at about the cost of reading the dataset once. ``max_images`` caps the
check at N evenly spaced images per split; unchecked images count as usable.

The result is a :class:`CheckReport`:

* ``error`` (fatal) — a required file is missing or unreadable, a pickle asks to run
  code, or a required split has no usable image → exit code 2;
* ``problems`` — one line each, naming the file and what is wrong (listed but
  missing, not decodable, malformed line N, listed twice, ...) → exit code 1;
* otherwise exit code 0.

Image problems of one kind are listed for the first 20 images of a split, then
summarised in one line ("... and 1,234 more ...").
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SigrlError, UnsafeFileError, UsageError
from .base import MultiLabelSplit
from .formats import LoadedDataset, load_dataset

__all__ = ["FORMATS", "CheckReport", "check_dataset", "check_images"]

FORMATS = ("nuswide", "voc", "coco", "csv", "cub", "formatted")
MAX_LISTED = 20


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``train_images`` etc. count usable images."""

    format: str
    root: str
    layout: str | None = None
    seen_labels: int = 0
    unseen_labels: int = 0
    train_images: int = 0
    test_images: int = 0
    val_images: int | None = None
    listed_images: dict = field(default_factory=dict)
    checked_images: int = 0
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        """0 usable, 1 usable with problems, 2 not usable."""
        return 2 if self.error else (1 if self.problems else 0)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "root": self.root,
            "layout": self.layout,
            "usable": self.usable,
            "exit_code": self.exit_code,
            "seen_labels": self.seen_labels,
            "unseen_labels": self.unseen_labels,
            "train_images": self.train_images,
            "test_images": self.test_images,
            "val_images": self.val_images,
            "listed_images": dict(self.listed_images),
            "checked_images": self.checked_images,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "error": self.error,
        }

    def to_text(self, max_problems: int = 20) -> str:
        name = {"nuswide": "NUS-WIDE", "voc": "PASCAL VOC", "coco": "COCO", "csv": "CSV/JSONL dataset",
                "cub": "CUB-200-2011 attributes", "formatted": "Cole et al. formatted .npy dataset"}[self.format]
        layout = f" ({self.layout} layout)" if self.layout else ""
        state = ("NOT USABLE" if self.error else
                 f"usable with {len(self.problems)} problem{'s' * (len(self.problems) != 1)}" if self.problems
                 else "usable, no problems found")
        lines = [f"{name}{layout} at {self.root}: {state}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.append(f"  labels: {self.seen_labels} seen" + (f", {self.unseen_labels} unseen" if self.unseen_labels else ""))
        imgs = f"  images: train {self.train_images:,}, test {self.test_images:,}"
        if self.val_images is not None:
            imgs += f", val {self.val_images:,}"
        listed = sum(self.listed_images.values())
        imgs += f" usable (checked {self.checked_images:,} of {listed:,} listed image files)"
        lines.append(imgs)
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.problems:
            lines.append(f"  problems ({len(self.problems)}):")
            lines.extend(f"    - {p}" for p in self.problems[:max_problems])
            if len(self.problems) > max_problems:
                lines.append(f"    ... and {len(self.problems) - max_problems} more (use --json to see all)")
        return "\n".join(lines)


def _sample(n: int, max_images: int | None) -> np.ndarray:
    if max_images is None or max_images >= n:
        return np.arange(n)
    if max_images <= 0:
        return np.arange(0)
    return np.unique(np.linspace(0, n - 1, max_images).round().astype(np.int64))


def _verify(path: Path, decode: bool = False) -> str | None:
    """None if ``path`` is a readable image, else the reason; ``decode``: decode all
    of its pixels too (``verify`` alone leaves JPEG data unread)."""
    import warnings

    from PIL import Image

    if not path.is_file():
        return "missing"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()
            if decode:
                with Image.open(path) as im:  # verify() leaves the file unusable: open again
                    im.load()
    except Exception as err:  # noqa: BLE001 - any failure means "not decodable"
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not decodable ({msg})"
    return None


def check_images(split: MultiLabelSplit, source: str, max_images: int | None, problems: list[str],
                 bar=None, decode: bool = False) -> tuple[int, int]:
    """Check the image files of ``split``; returns ``(usable, checked)``.

    Problems name the image path and ``source`` (the file that lists it).
    """
    idx = _sample(len(split), max_images)
    bad: dict[str, list[str]] = {}
    for i in idx:
        path = split.path(int(i))
        reason = _verify(path, decode)
        if reason is not None:
            kind = "missing" if reason == "missing" else "not decodable"
            bad.setdefault(kind, []).append(
                f"{path}: listed in {source} but missing" if reason == "missing" else f"{path}: {reason}"
            )
        if bar is not None:
            bar.update(1)
    for kind, msgs in bad.items():
        problems.extend(msgs[:MAX_LISTED])
        if len(msgs) > MAX_LISTED:
            problems.append(f"... and {len(msgs) - MAX_LISTED:,} more images {kind} in {source}")
    dup = [img for img, k in Counter(split.images).items() if k > 1]
    if dup:
        problems.append(f"{source}: {len(dup):,} image(s) listed more than once (first: {dup[0]})")
    return len(split) - sum(len(m) for m in bad.values()), len(idx)


# ------------------------------------------------------------------ per-format loading


def _load_csv(root: Path, report: CheckReport, problems: list[str]):
    loaded = load_dataset("csv", root, problems=problems)
    report.seen_labels, report.unseen_labels = len(loaded.dataset.seen), len(loaded.dataset.unseen)
    return _roles(loaded)


def _roles(loaded: LoadedDataset) -> list[tuple[str, MultiLabelSplit, str]]:
    ds = loaded.dataset
    splits = {"train": ds.train, "test": ds.test, "val": ds.val}
    return [(role, splits[role], src) for role, src in loaded.sources.items() if splits.get(role) is not None]


def _load_nuswide(root: Path, report: CheckReport, problems: list[str]):
    from . import nuswide as nw

    report.layout = nw.detect_layout(root)
    seen, unseen = nw.nuswide_labels(root)  # label files first: counted even if a later file is missing
    report.seen_labels, report.unseen_labels = len(seen), len(unseen)
    ds = load_dataset("nuswide", root, {"layout": report.layout}, problems=problems).dataset
    if (ds.seen and len(ds.seen) != nw.N_SEEN) or len(ds.unseen) != nw.N_UNSEEN:
        report.notes.append(
            f"{len(ds.seen)} seen / {len(ds.unseen)} unseen labels; the zero-shot protocol has "
            f"{nw.N_SEEN} / {nw.N_UNSEEN}"
        )
    report.notes.append("train keeps only images with at least one seen positive (protocol)")
    if report.layout == "biam":
        emb = root / "label_emb.pt"
        if emb.is_file():
            try:
                nw.load_label_embeddings(root)
            except UnsafeFileError:
                raise  # a file that asks to run code makes the dataset unusable
            except SigrlError as err:
                problems.append(str(err))
        sources = (nw.find_file(root, nw.TRAIN_NAMES), nw.find_file(root, nw.TEST_NAMES))
    else:
        sources = (nw.find_file(root, nw.TRAINLIST), nw.find_file(root, nw.TESTLIST))
    return [("train", ds.train, str(sources[0])), ("test", ds.test, str(sources[1]))]


def _load_split_pair(fmt: str, root: Path, report: CheckReport, problems: list[str], year=None):
    """VOC / COCO / CUB / formatted: the train and test splits the trainer would use (sigrl.data.formats)."""
    loaded = load_dataset(fmt, root, {"year": year} if year else {}, problems=problems)
    report.layout = loaded.layout
    report.notes += loaded.notes
    report.seen_labels = len(loaded.dataset.train.labels)
    return _roles(loaded)


def check_dataset(fmt: str, root: str | Path, *, max_images: int | None = None, progress: bool = True,
                  year: int | str | None = None, decode: bool = False) -> CheckReport:
    """Check a dataset root; never raises for a bad dataset (see :class:`CheckReport`).

    Args:
        fmt: "nuswide", "voc", "coco", "csv", "cub" or "formatted".
        root: the dataset root.
        max_images: check at most this many image files per split (evenly spaced).
        progress: show a tqdm bar on stderr while checking images.
        year: VOC / COCO year when the root holds several.
        decode: decode every checked image completely (finds truncated JPEGs; slower).
    """
    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if max_images is not None and max_images < 0:
        raise UsageError(f"--max-images must be 0 or more, got {max_images}")
    root = Path(root)
    report = CheckReport(fmt, str(root))
    problems: list[str] = []
    try:
        if not root.is_dir():
            raise DataError(f"{root}: not a directory (expected a {fmt} dataset root)")
        if fmt == "csv":
            splits = _load_csv(root, report, problems)
        elif fmt == "nuswide":
            splits = _load_nuswide(root, report, problems)
        else:
            splits = _load_split_pair(fmt, root, report, problems, year)
    except SigrlError as err:
        report.error = str(err)
        report.problems = problems
        return report

    from tqdm.auto import tqdm

    total = sum(len(_sample(len(s), max_images)) for _, s, _ in splits)
    with tqdm(total=total, desc="checking images", unit="img", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        for role, split, source in splits:
            report.listed_images[role] = len(split)
            usable, checked = check_images(split, source, max_images, problems, bar, decode)
            report.checked_images += checked
            if role == "val":
                report.val_images = usable
            else:
                setattr(report, f"{role}_images", usable)
    if max_images is not None and report.checked_images < sum(report.listed_images.values()):
        report.notes.append(f"only {report.checked_images:,} image files checked (--max-images {max_images})")
    report.problems = problems
    for role in ("train", "test"):
        if getattr(report, f"{role}_images") == 0:
            source = next(src for r, _, src in splits if r == role)
            report.error = f"{source}: no usable {role} image (every listed image is missing or unreadable)"
            break
    return report
