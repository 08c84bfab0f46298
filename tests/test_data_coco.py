"""COCO loader on a tiny instances JSON written here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sigrl.data.coco import find_coco_splits, load_coco
from sigrl.errors import DataError, UnsafeFileError

CATS = [{"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"}]
IMAGES = [{"id": 10, "file_name": "COCO_val2014_000000000010.jpg", "width": 8, "height": 8},
          {"id": 11, "file_name": "COCO_val2014_000000000011.jpg", "width": 8, "height": 8},
          {"id": 12, "file_name": "COCO_val2014_000000000012.jpg", "width": 8, "height": 8}]
ANNS = [{"id": 1, "image_id": 10, "category_id": 18, "iscrowd": 0, "bbox": [0, 0, 2, 2], "area": 4},
        {"id": 2, "image_id": 10, "category_id": 18, "iscrowd": 0, "bbox": [0, 0, 2, 2], "area": 4},
        {"id": 3, "image_id": 10, "category_id": 90, "iscrowd": 0, "bbox": [0, 0, 2, 2], "area": 4},
        {"id": 4, "image_id": 11, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 2, 2], "area": 4}]


def make_coco(root: Path, split="val2014", images=IMAGES, anns=ANNS) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    data = {"info": {}, "images": images, "annotations": anns, "categories": CATS}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_targets_sorted_by_category_id(tmp_path, capsys):
    root = make_coco(tmp_path)
    assert find_coco_splits(root) == ["val2014"]
    s = load_coco(root, "val2014")
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are swallowed
    assert s.labels == ["person", "dog", "toothbrush"]  # ids 1, 18, 90
    assert s.images[0] == "val2014/COCO_val2014_000000000010.jpg"
    np.testing.assert_array_equal(s.targets, [[-1, 1, 1], [1, -1, -1], [-1, -1, -1]])
    assert len(load_coco(root, "val2014", drop_empty=True)) == 2
    assert s.path(1) == root / "val2014" / "COCO_val2014_000000000011.jpg"


def test_images_subfolder(tmp_path):
    root = make_coco(tmp_path, "train2017")
    (root / "train2017").rmdir()
    (root / "images" / "train2017").mkdir(parents=True)
    assert load_coco(root, "train2017").images[0].startswith("images/train2017/")


def test_errors(tmp_path):
    with pytest.raises(DataError, match=r"instances_val2014.json: file not found"):
        load_coco(tmp_path, "val2014")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2014.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(tmp_path, "val2014")
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="'images' and 'categories'"):
        load_coco(tmp_path, "val2014")
    bad_anns = ANNS + [{"id": 9, "image_id": 12, "category_id": 7, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1}]
    make_coco(tmp_path, anns=bad_anns)
    with pytest.raises(DataError, match="unknown category_id 7"):
        load_coco(tmp_path, "val2014")
    problems: list[str] = []
    assert len(load_coco(tmp_path, "val2014", problems=problems)) == 2 and len(problems) == 1
    make_coco(tmp_path, images=IMAGES + [{"id": 13, "file_name": "../../etc/passwd"}])
    with pytest.raises(UnsafeFileError, match="escapes"):
        load_coco(tmp_path, "val2014")
