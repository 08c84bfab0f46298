"""The one dataset dispatcher: a format name and a root -> a :class:`ZeroShotDataset`.

``sigrl train`` / ``sigrl cache build`` (through :mod:`sigrl.experiment`) and
``sigrl data check`` all open datasets here, so they pick the same splits:

=========  ===================================================================
format     train / test
=========  ===================================================================
csv        ``train.csv`` / ``test.csv`` (+ ``val.csv``); unseen labels from ``unseen.txt``
world      the embedded world, a csv dataset the generator wrote
nuswide    the zero-shot train / test lists (925 seen + 81 unseen labels)
voc        VOC2007 (test annotations public): trainval / test;
           VOC2012 (SPML protocol, official val = test): train / val
coco       train<year> / val<year> (SPML protocol), year 2014 unless only 2017 exists
cub        CUB-200-2011, 312 attributes: is_train = 1 / the rest (Cole et al.; official
           archive or their formatted .npy files, :mod:`sigrl.data.cub`)
formatted  Cole et al.'s formatted_{train,val}_{images,labels}.npy of any dataset: train / val
           (options image_dir, labels_file)
=========  ===================================================================

``options`` are keyword arguments of the format's loader; for VOC and COCO also
``train_split`` / ``test_split`` (and VOC ``year``) to choose other splits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from .base import MultiLabelSplit, ZeroShotDataset
from .coco import annotation_file, find_coco_splits, load_coco
from .cub import find_cub_root, load_cub, load_formatted
from .csvdata import find_split_file, load_csv_dataset, load_csv_split
from .nuswide import load_nuswide
from .voc import find_voc_root, load_voc, read_split_ids

__all__ = ["FORMATS", "LoadedDataset", "load_dataset", "voc_splits", "coco_splits"]

FORMATS = ("csv", "world", "nuswide", "voc", "coco", "cub", "formatted")


@dataclass
class LoadedDataset:
    """A dataset with where it came from: ``sources`` maps a role (train, val, test) to
    the file listing it; ``layout`` names the variant found (VOC year, COCO year,
    NUS-WIDE layout); ``notes`` are facts a report should show."""

    dataset: ZeroShotDataset
    sources: dict[str, str] = field(default_factory=dict)
    layout: str | None = None
    notes: list[str] = field(default_factory=list)


def voc_splits(root: str | Path, year=None) -> tuple[Path, str, str]:
    """(VOC year directory, train split, test split) by the rule of the module docstring."""
    vroot = find_voc_root(root, year)
    main = vroot / "ImageSets" / "Main"
    test_ids = read_split_ids(vroot, "test") if (main / "test.txt").is_file() else []
    if test_ids and (vroot / "Annotations" / f"{test_ids[0]}.xml").is_file():
        return vroot, "trainval", "test"
    return vroot, "train", "val"


def coco_splits(root: str | Path, year=None) -> tuple[str, str]:
    """(train split, test split) of a COCO root: train<year> / val<year>."""
    found = find_coco_splits(root)
    years = [str(year)] if year else ["2014", "2017"]
    y = next((y for y in years if f"train{y}" in found or f"val{y}" in found), years[0])
    for s in (f"train{y}", f"val{y}"):
        if s not in found:
            raise DataError(f"{annotation_file(root, s)}: file not found (expected the COCO instances JSON)")
    return f"train{y}", f"val{y}"


def _one_label_set(root: Path, ds: ZeroShotDataset, opts: dict) -> ZeroShotDataset:
    """csv/world with ``all_labels``: every label is a training label (SPML, partial)."""
    labels = list(ds.seen) + list(ds.unseen)
    splits = {s: load_csv_split(find_split_file(root, s), labels, root=root, **opts)
              for s in ("train", "test") + (("val",) if ds.val is not None else ())}
    return ZeroShotDataset(splits["train"], splits["test"], labels, [], splits.get("val"))


def load_dataset(fmt: str, root: str | Path, options: dict | None = None, *, all_labels: bool = False,
                 problems: list[str] | None = None) -> LoadedDataset:
    """Open the dataset ``fmt`` at ``root``.

    Args:
        fmt: one of :data:`FORMATS`.
        options: keyword arguments of the format's loader (module docstring).
        all_labels: csv/world: one label set for everything, ignoring ``unseen.txt``.
        problems: collect per-row/per-image defects here instead of raising.
    Raises:
        ConfigError: an option the loader does not take; DataError: a broken dataset.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root, opts = Path(root), dict(options or {})
    if problems is not None:
        opts["problems"] = problems
    try:
        if fmt in ("csv", "world"):
            return _load_csv(root, opts, all_labels)
        if fmt == "nuswide":
            ds = load_nuswide(root, **opts)
            return LoadedDataset(ds, layout=opts.get("layout"))
        if fmt == "voc":
            return _load_voc(root, opts)
        if fmt == "cub":
            return _load_cub(root, opts)
        if fmt == "formatted":
            return _load_formatted(root, opts)
        return _load_coco(root, opts)
    except TypeError as err:
        raise ConfigError(f"data.options: {str(err).splitlines()[0]}") from None


def _load_csv(root: Path, opts: dict, all_labels: bool) -> LoadedDataset:
    ds = load_csv_dataset(root, **opts)
    if all_labels and ds.unseen:
        ds = _one_label_set(root, ds, opts)
    sources = {s: str(find_split_file(root, s)) for s in ("train", "test") + (("val",) if ds.val is not None else ())}
    return LoadedDataset(ds, sources)


def _pair(train: MultiLabelSplit, test: MultiLabelSplit) -> ZeroShotDataset:
    if train.name == test.name:
        raise ConfigError(f"data.options: train_split and test_split are the same split ({train.name})")
    return ZeroShotDataset(train, test, list(train.labels), [])


def _load_voc(root: Path, opts: dict) -> LoadedDataset:
    year = opts.pop("year", None)
    vroot, train_name, test_name = voc_splits(root, year)
    train_name, test_name = opts.pop("train_split", train_name), opts.pop("test_split", test_name)
    ds = _pair(load_voc(vroot, train_name, **opts), load_voc(vroot, test_name, **opts))
    main = vroot / "ImageSets" / "Main"
    notes = [f"train = {train_name}, test = {test_name}; a class present only as difficult is unknown (0)"]
    if train_name == "train" and (main / "test.txt").is_file():
        notes.append("test split has no annotations: using train / val")
    return LoadedDataset(ds, {"train": str(main / f"{train_name}.txt"), "test": str(main / f"{test_name}.txt")},
                         vroot.name, notes)


def _load_coco(root: Path, opts: dict) -> LoadedDataset:
    year = opts.pop("year", None)
    both = "train_split" in opts and "test_split" in opts
    train_name, test_name = (None, None) if both else coco_splits(root, year)
    train_name, test_name = opts.pop("train_split", train_name), opts.pop("test_split", test_name)
    ds = _pair(load_coco(root, train_name, **opts), load_coco(root, test_name, **opts))
    notes = [f"train = {train_name}, test = {test_name} (SPML protocol)"]
    if len(ds.train.labels) != 80:
        notes.append(f"{len(ds.train.labels)} categories (real COCO has 80)")
    return LoadedDataset(ds, {"train": str(annotation_file(root, train_name)),
                              "test": str(annotation_file(root, test_name))}, train_name[-4:], notes)


def _load_cub(root: Path, opts: dict) -> LoadedDataset:
    ds = _pair(load_cub(root, "train", **opts), load_cub(root, "test", **opts))
    inner = find_cub_root(root)
    formatted = (inner / "formatted_train_labels.npy").is_file() or (inner.parent / "formatted_train_labels.npy").is_file()
    layout = "formatted" if formatted or not (inner / "images.txt").is_file() else "official"
    notes = ["train = is_train 1, test = is_train 0 (Cole et al.'s train / val); no unknown entries"]
    if len(ds.train.labels) != 312:
        notes.append(f"{len(ds.train.labels)} attributes (real CUB has 312)")
    src = str(inner / "train_test_split.txt") if layout == "official" else str(inner / "formatted_train_labels.npy")
    return LoadedDataset(ds, {"train": src, "test": src}, layout, notes)


def _load_formatted(root: Path, opts: dict) -> LoadedDataset:
    ds = _pair(load_formatted(root, split="train", **opts), load_formatted(root, split="val", **opts))
    notes = ["train = formatted_train_*, test = formatted_val_* (Cole et al.'s files; SPML protocol)"]
    return LoadedDataset(ds, {"train": str(root / "formatted_train_labels.npy"),
                              "test": str(root / "formatted_val_labels.npy")}, None, notes)
