"""CUB-200-2011 attributes as Cole et al. read them, on a tiny generated CUB-layout folder:
the official archive's files, Cole et al.'s formatted .npy files, ``sigrl data check cub``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

K = 6  # attributes in the tiny folder (real CUB: 312)
NAMES = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue",
         "has_wing_color::brown", "has_size::small_(5_-_9_in)", "has_eye_color::black"]


def make_cub(root: Path, n=7, seed=0, extra_field_line=True) -> tuple[Path, np.ndarray, np.ndarray, list[str]]:
    """The unpacked archive: root/attributes.txt and root/CUB_200_2011/...; returns
    (root, is_present (n, K) 0/1, is_train (n,), relative image paths)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    inner = root / "CUB_200_2011"
    (inner / "attributes").mkdir(parents=True)
    present = rng.integers(0, 2, size=(n, K))
    present[0] = 0  # an image with no attribute present
    is_train = np.array([1, 0] * (n // 2) + [1] * (n % 2))
    paths = [f"{1 + i % 2:03d}.Bird_{i % 2}/Bird_{i:04d}.jpg" for i in range(n)]
    for i, rel in enumerate(paths):
        (inner / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(inner / "images" / rel)
    (root / "attributes.txt").write_text("".join(f"{j + 1} {name}\n" for j, name in enumerate(NAMES)))
    (inner / "images.txt").write_text("".join(f"{i + 1} {rel}\n" for i, rel in enumerate(paths)))
    (inner / "train_test_split.txt").write_text("".join(f"{i + 1} {t}\n" for i, t in enumerate(is_train)))
    lines = []
    for i in range(n):
        for j in range(K):
            extra = " 0" if (extra_field_line and i == 1 and j == 2) else ""  # the official file has such lines
            lines.append(f"{i + 1} {j + 1} {present[i, j]} {1 + (i + j) % 4} 3.5{extra}\n")
    (inner / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    return root, present, is_train, paths


def test_official_layout_reads_like_format_cub(tmp_path):
    """Labels of image i = its is_present flags in attribute-id order (as Cole et al.'s
    preproc/format_cub.py builds them), split by train_test_split.txt; 0 -> -1."""
    from sigrl.data.formats import load_dataset

    root, present, is_train, paths = make_cub(tmp_path / "cub")
    loaded = load_dataset("cub", root)
    ds = loaded.dataset
    assert loaded.layout == "official"
    for split, flag in ((ds.train, 1), (ds.test, 0)):
        rows = [i for i in range(len(paths)) if is_train[i] == flag]
        assert split.images == [paths[i] for i in rows]
        expected = np.where(present[rows] == 1, 1, -1)
        assert np.array_equal(split.targets, expected)
        assert all(split.path(k).is_file() for k in range(len(split)))
    assert ds.train.labels[0] == "bill shape curved (up or down)"
    assert ds.train.labels[4] == "size small (5 - 9 in)"
    assert load_dataset("cub", root, {"label_text": "raw"}).dataset.train.labels == NAMES
    # Cole et al.'s data/cub directory (the archive one level down) is accepted too
    nested = tmp_path / "cole"
    nested.mkdir()
    (root).rename(nested / "CUB_200_2011")
    again = load_dataset("cub", nested).dataset
    assert np.array_equal(again.train.targets, ds.train.targets) and again.test.images == ds.test.images


def test_formatted_files_take_precedence_and_refuse_pickles(tmp_path):
    from sigrl.data.formats import load_dataset
    from sigrl.errors import DataError

    root, present, is_train, paths = make_cub(tmp_path / "cub")
    tr, te = is_train == 1, is_train == 0
    # what format_cub.py writes: 0/1 labels, image paths relative to the images directory
    np.save(root / "formatted_train_labels.npy", present[tr])
    np.save(root / "formatted_train_images.npy", np.array([p for p, t in zip(paths, tr) if t]))
    np.save(root / "formatted_val_labels.npy", present[te])
    np.save(root / "formatted_val_images.npy", np.array([p for p, t in zip(paths, te) if t]))
    loaded = load_dataset("cub", root)
    assert loaded.layout == "formatted"
    assert np.array_equal(loaded.dataset.test.targets, np.where(present[te] == 1, 1, -1))
    assert loaded.dataset.test.path(0).is_file()
    # the generic format on the same files, with a names file
    (root / "labels.txt").write_text("\n".join(NAMES) + "\n")
    gen = load_dataset("formatted", root, {"image_dir": "CUB_200_2011/images"}).dataset
    assert gen.train.labels == NAMES and np.array_equal(gen.train.targets, loaded.dataset.train.targets)
    assert gen.train.path(0).is_file()
    np.save(root / "formatted_val_images.npy", np.array([{"a": 1}], dtype=object))  # a pickle
    with pytest.raises(DataError, match="without pickles"):
        load_dataset("cub", root)


def test_data_check_cub(tmp_path):
    from sigrl.data.check import check_dataset

    root, present, is_train, paths = make_cub(tmp_path / "cub")
    report = check_dataset("cub", root, progress=False)
    assert report.exit_code == 0, report.to_text()
    assert report.seen_labels == K
    assert (report.train_images, report.test_images) == (int(is_train.sum()), int((is_train == 0).sum()))
    assert "CUB-200-2011" in report.to_text()
    # a missing image is a problem; a missing label file makes the dataset unusable
    (root / "CUB_200_2011" / "images" / paths[1]).unlink()
    bad = check_dataset("cub", root, progress=False)
    assert bad.exit_code == 1 and any(paths[1] in p for p in bad.problems)
    (root / "CUB_200_2011" / "train_test_split.txt").unlink()
    assert check_dataset("cub", root, progress=False).exit_code == 2


def test_cli_data_check_cub(tmp_path, capsys):
    from sigrl.cli import main

    root, *_ = make_cub(tmp_path / "cub")
    assert main(["data", "check", "cub", str(root)]) == 0
    assert "usable" in capsys.readouterr().out


def test_cub_single_positive_draw(tmp_path):
    """The SPML protocol on CUB: one observed positive per image with any positive."""
    from sigrl.data import observed as obs
    from sigrl.data.formats import load_dataset

    root, *_ = make_cub(tmp_path / "cub", n=9)
    train = load_dataset("cub", root).dataset.train
    o = obs.single_positive(train.targets, seed=0)
    has_pos = (train.targets == 1).any(1)
    assert np.array_equal((o == 1).sum(1), has_pos.astype(int)) and not (o == -1).any()
    assert ((o == 1) <= (train.targets == 1)).all()
