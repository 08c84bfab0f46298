"""PASCAL VOC loader on a tiny VOC tree written here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sigrl.data.voc import VOC_CLASSES, find_voc_root, load_voc
from sigrl.errors import DataError, UsageError


def xml(objects) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for n, d in objects
    )
    return f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename>{objs}</annotation>"


ANNS = {
    "000001": [("dog", False), ("person", False), ("person", True)],
    "000002": [("cat", True)],                      # cat only difficult
    "000003": [("tvmonitor", False), ("cat", True), ("cat", False)],
}


def make_voc(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, objs in ANNS.items():
        (root / "Annotations" / f"{i}.xml").write_text(xml(objs))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n\n000003\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000002\r\n")
    return root


def col(name):
    return VOC_CLASSES.index(name)


def test_targets_and_difficult_rule(tmp_path):
    root = make_voc(tmp_path / "VOC2007")
    s = load_voc(root, "trainval")
    assert s.labels == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert s.images == ["JPEGImages/000001.jpg", "JPEGImages/000002.jpg", "JPEGImages/000003.jpg"]
    expected = -np.ones((3, 20), dtype=np.int8)
    expected[0, [col("dog"), col("person")]] = 1
    expected[1, col("cat")] = 0               # present only as difficult: unknown
    expected[2, [col("tvmonitor"), col("cat")]] = 1  # one non-difficult cat suffices
    np.testing.assert_array_equal(s.targets, expected)
    assert load_voc(root, "trainval", difficult="positive").targets[1, col("cat")] == 1
    assert load_voc(root, "trainval", difficult="negative").targets[1, col("cat")] == -1
    assert s.path(0) == root / "JPEGImages" / "000001.jpg"


def test_find_root_from_parent(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    assert find_voc_root(tmp_path) == tmp_path / "VOCdevkit" / "VOC2012"
    assert len(load_voc(tmp_path, "test", year=2012)) == 1
    make_voc(tmp_path / "VOC2007")
    with pytest.raises(UsageError, match="several VOC years"):
        find_voc_root(tmp_path)
    assert find_voc_root(tmp_path, 2007) == tmp_path / "VOC2007"
    with pytest.raises(DataError, match="directory not found"):
        find_voc_root(tmp_path / "VOC2007" / "JPEGImages")


def test_errors_name_the_file(tmp_path):
    root = make_voc(tmp_path)
    with pytest.raises(DataError, match=r"ImageSets/Main/val.txt: file not found"):
        load_voc(root, "val")
    (root / "Annotations" / "000003.xml").write_text(xml([("unicorn", False)]))
    with pytest.raises(DataError, match=r"000003.xml: unknown class 'unicorn'"):
        load_voc(root)
    (root / "Annotations" / "000003.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"000003.xml: malformed XML"):
        load_voc(root)
    (root / "Annotations" / "000002.xml").unlink()
    problems: list[str] = []
    s = load_voc(root, problems=problems)
    assert s.images == ["JPEGImages/000001.jpg"]
    assert len(problems) == 2 and "000002.xml: file not found" in problems[0]
    (root / "ImageSets" / "Main" / "test.txt").write_text("../../etc/passwd\n")
    with pytest.raises(DataError, match=r"test.txt:1: malformed line"):
        load_voc(root, "test")
    with pytest.raises(UsageError, match="split must be"):
        load_voc(root, "minival")
