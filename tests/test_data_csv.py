"""The generic CSV / JSONL dataset format: reading, writing, errors naming file:line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sigrl.data.base import MultiLabelSplit, ZeroShotDataset
from sigrl.data.csvdata import (
    load_csv_dataset,
    load_csv_split,
    read_label_list,
    write_csv_dataset,
    write_csv_split,
)
from sigrl.errors import DataError, UnsafeFileError, UsageError


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_label_list_tolerates_bom_crlf_blank_lines(tmp_path):
    p = write(tmp_path / "labels.txt", "\ufeffdog\r\n\r\ncat \r\nsea lion\r\n\n")
    assert read_label_list(p) == ["dog", "cat", "sea lion"]


@pytest.mark.parametrize(
    "text,match",
    [("dog\ncat\ndog\n", r"labels.txt:3: label 'dog' listed twice \(first on line 1\)"),
     ("dog\n-cat\n", r"labels.txt:2: .*starts with '-'"),
     ("a|b\n", r"labels.txt:1: .*contains '\|'")],
)
def test_label_list_errors_name_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_label_list(write(tmp_path / "labels.txt", text))


def test_csv_split_targets(tmp_path):
    write(tmp_path / "labels.txt", "dog\ncat\nbeach\n")
    p = write(
        tmp_path / "train.csv",
        "image,labels\nimg/a.png,dog|beach\nimg\\b.png,cat|-dog\n\nimg/c.png,\n",
    )
    s = load_csv_split(p)
    assert s.labels == ["dog", "cat", "beach"]
    assert s.images == ["img/a.png", "img/b.png", "img/c.png"]
    np.testing.assert_array_equal(s.targets, [[1, -1, 1], [-1, 1, -1], [-1, -1, -1]])
    assert s.root == tmp_path and s.path(1) == tmp_path / "img" / "b.png"
    u = load_csv_split(p, unlisted="unknown")
    np.testing.assert_array_equal(u.targets, [[1, 0, 1], [-1, 1, 0], [0, 0, 0]])
    assert u.targets.dtype == np.int8


def test_extra_columns_and_quoted_fields(tmp_path):
    p = write(tmp_path / "s.csv", 'id,labels,image\n1,"dog|cat","a b, c.png"\n')
    s = load_csv_split(p)
    assert s.labels == ["cat", "dog"]  # inferred: sorted union
    assert s.images == ["a b, c.png"]
    np.testing.assert_array_equal(s.targets, [[1, 1]])


def test_jsonl_split(tmp_path):
    lines = [{"image": "x/1.png", "labels": ["b", "-a"]}, {"image": "x/2.png", "labels": []},
             {"image": "x/3.png", "labels": "a|b"}]
    p = write(tmp_path / "test.jsonl", "\n".join(json.dumps(o) for o in lines) + "\n\n")
    s = load_csv_split(p, ["a", "b", "c"], unlisted="unknown")
    np.testing.assert_array_equal(s.targets, [[-1, 1, 0], [0, 0, 0], [1, 1, 0]])


@pytest.mark.parametrize(
    "body,err,match",
    [
        ("image,labels\na.png,dog\nb.png,wolf\n", DataError, r"train.csv:3: label 'wolf' is not in the label list"),
        ("image,labels\na.png,dog|-dog\n", DataError, r"train.csv:2: label 'dog' is both positive and negative"),
        ("image,labels\na.png,dog,extra\n", DataError, r"train.csv:2: malformed line: 3 fields"),
        ("image,labels\n../a.png,dog\n", UnsafeFileError, r"train.csv:2: .*escapes the dataset root"),
        ("image,labels\n/etc/passwd,dog\n", UnsafeFileError, r"train.csv:2: absolute path"),
        ("img,tags\na.png,dog\n", DataError, r"train.csv:1: header must have the columns 'image' and 'labels'"),
        ("", DataError, r"train.csv: empty file"),
        ("image,labels\na.png,-\n", DataError, r"train.csv:2: '-' without a label name"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, body, err, match):
    write(tmp_path / "labels.txt", "dog\ncat\n")
    p = write(tmp_path / "train.csv", body)
    with pytest.raises(err, match=match):
        load_csv_split(p)


def test_bad_jsonl_and_encoding(tmp_path):
    p = write(tmp_path / "val.jsonl", '{"image": "a.png", "labels": ["x"]}\n{"image": 3}\n')
    with pytest.raises(DataError, match=r"val.jsonl:2: malformed line"):
        load_csv_split(p)
    p = write(tmp_path / "val.jsonl", '{"image": "a.png", "labels": ["x"]}\nnot json\n')
    with pytest.raises(DataError, match=r"val.jsonl:2: malformed line: not JSON"):
        load_csv_split(p)
    p = tmp_path / "bad.csv"
    p.write_bytes(b"image,labels\na.png,caf\xe9\n")
    with pytest.raises(DataError, match=r"bad.csv:2: not valid UTF-8"):
        load_csv_split(p)
    with pytest.raises(DataError, match="file not found"):
        load_csv_split(tmp_path / "nope.csv")
    with pytest.raises(UsageError, match="unlisted"):
        load_csv_split(p, unlisted="maybe")


def test_problems_list_collects_and_skips(tmp_path):
    write(tmp_path / "labels.txt", "dog\ncat\n")
    p = write(tmp_path / "train.csv", "image,labels\na.png,dog\nb.png,wolf\n../c.png,cat\nd.png,cat,x\ne.png,cat\n")
    problems: list[str] = []
    s = load_csv_split(p, problems=problems)
    assert s.images == ["a.png", "e.png"]
    assert len(problems) == 3
    assert sorted(m.split(": ")[0].rsplit(":", 1)[1] for m in problems) == ["3", "4", "5"]
    assert all(m.startswith(str(p)) for m in problems)


def make_dataset(root, *, with_labels=True, unseen=True, ext="csv"):
    if with_labels:
        write(root / "labels.txt", "dog\ncat\nbeach\nsnow\n")
    if unseen:
        write(root / "unseen.txt", "snow\nbeach\n")
    rows_train = [("i/1.png", "dog|beach"), ("i/2.png", "cat")]
    rows_test = [("i/3.png", "snow|dog"), ("i/4.png", "beach|-cat")]
    for name, rows in (("train", rows_train), ("test", rows_test)):
        if ext == "csv":
            write(root / f"{name}.csv", "image,labels\n" + "".join(f"{a},{b}\n" for a, b in rows))
        else:
            write(root / f"{name}.jsonl", "".join(json.dumps({"image": a, "labels": b.split("|")}) + "\n" for a, b in rows))


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_dataset_seen_unseen_columns(tmp_path, ext):
    make_dataset(tmp_path, ext=ext)
    ds = load_csv_dataset(tmp_path)
    assert ds.seen == ["dog", "cat"] and ds.unseen == ["snow", "beach"]
    assert ds.train.labels == ["dog", "cat"]  # unseen columns never reach training
    np.testing.assert_array_equal(ds.train.targets, [[1, -1], [-1, 1]])
    assert ds.test.labels == ["dog", "cat", "snow", "beach"]
    np.testing.assert_array_equal(ds.test.targets, [[1, -1, 1, -1], [-1, -1, -1, 1]])
    assert ds.val is None


def test_dataset_inferred_vocabulary_and_val(tmp_path):
    make_dataset(tmp_path, with_labels=False, unseen=False)
    write(tmp_path / "val.csv", "image,labels\ni/5.png,zebra\n")
    ds = load_csv_dataset(tmp_path)
    assert ds.seen == ["beach", "cat", "dog", "snow", "zebra"] and ds.unseen == []
    assert ds.val.labels == ds.test.labels
    np.testing.assert_array_equal(ds.val.targets, [[-1, -1, -1, -1, 1]])


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_csv_dataset(tmp_path / "absent")
    make_dataset(tmp_path)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(DataError, match=r"test.csv: file not found \(required split"):
        load_csv_dataset(tmp_path)
    make_dataset(tmp_path)
    write(tmp_path / "unseen.txt", "whale\n")
    with pytest.raises(DataError, match=r"unseen.txt: label 'whale' is not in .*labels.txt"):
        load_csv_dataset(tmp_path)
    make_dataset(tmp_path)
    write(tmp_path / "train.jsonl", "")
    with pytest.raises(DataError, match="both train.csv and train.jsonl"):
        load_csv_dataset(tmp_path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_write_read_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    labels = ["dog", "cat", "sea lion", "t-shirt"]
    images = [f"imgs/{i:03d}.png" for i in range(30)]
    full = rng.choice(np.array([1, -1], dtype=np.int8), size=(30, 4))
    split = MultiLabelSplit(images, full, labels, tmp_path, "x")
    p = write_csv_split(tmp_path / f"full{suffix}", split)
    back = load_csv_split(p, labels)
    np.testing.assert_array_equal(back.targets, full)
    assert back.images == images

    partial = np.where(rng.random((30, 4)) < 0.4, 0, full).astype(np.int8)
    split_p = MultiLabelSplit(images, partial, labels, tmp_path, "x")
    with pytest.raises(UsageError, match="unknown"):
        write_csv_split(tmp_path / f"p{suffix}", split_p)
    p = write_csv_split(tmp_path / f"p{suffix}", split_p, unlisted="unknown")
    np.testing.assert_array_equal(load_csv_split(p, labels, unlisted="unknown").targets, partial)


def test_write_dataset_round_trip(tmp_path):
    make_dataset(tmp_path / "a")
    ds = load_csv_dataset(tmp_path / "a")
    write_csv_dataset(tmp_path / "b", ds, suffix=".jsonl")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["labels.txt", "test.jsonl", "train.jsonl", "unseen.txt"]
    back = load_csv_dataset(tmp_path / "b")
    assert isinstance(back, ZeroShotDataset)
    assert back.seen == ds.seen and back.unseen == ds.unseen
    np.testing.assert_array_equal(back.train.targets, ds.train.targets)
    np.testing.assert_array_equal(back.test.targets, ds.test.targets)
    assert back.test.images == ds.test.images


def test_write_refuses_unwritable_names_and_paths(tmp_path):
    s = MultiLabelSplit(["a.png"], [[1]], ["-x"], tmp_path)
    with pytest.raises(UsageError, match="starts with '-'"):
        write_csv_split(tmp_path / "o.csv", s)
    s = MultiLabelSplit(["/elsewhere/a.png"], [[1]], ["x"], tmp_path)
    with pytest.raises(UsageError, match="not under the split root"):
        write_csv_split(tmp_path / "o.csv", s)
    s = MultiLabelSplit([str(tmp_path / "sub" / "a.png")], [[1]], ["x"], tmp_path)
    write_csv_split(tmp_path / "o.csv", s)
    assert (tmp_path / "o.csv").read_text() == "image,labels\nsub/a.png,x\n"
