"""Property tests (hypothesis) for the parsers users feed text to: label lists
(``--labels``, ``--labels-file``, ``clean_labels``), CSV / JSON-lines split files and
prompt template files. Each test states what must hold for *any* input of its kind."""
from __future__ import annotations

import argparse
import csv
import io
import json
import posixpath
import re
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sigrl.commands.tag import read_labels
from sigrl.data.base import MultiLabelSplit
from sigrl.data.csvdata import load_csv_split, read_label_list, write_csv_split, write_label_list
from sigrl.errors import DataError, SigrlError, UnsafeFileError, UsageError
from sigrl.prompts import PromptSet, clean_labels, parse_templates
from sigrl.safeio import safe_relpath

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# characters str.splitlines() treats as line ends (a label file cannot hold them in a name)
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# any printable-ish unicode, including combining marks, emoji, RTL and odd spaces
ANY_CHAR = st.characters(blacklist_categories=("Cs",))
NAME_CHAR = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=LINE_BREAKS + ",|\ufeff")


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", " ".join(name.split()))


def _expected_clean(names) -> list[str]:
    out = []
    for n in names:
        n = _norm(n)
        if n and n not in out:
            out.append(n)
    return out


# ---------------------------------------------------------------- label lists


@SETTINGS
@given(st.lists(st.text(ANY_CHAR, max_size=12), max_size=20))
@example(["café", "cafe\u0301", " café "])       # precomposed / decomposed / padded: one label
@example(["a\u00a0b", "a b", "a\tb"])            # no-break space and tab are whitespace
def test_clean_labels_any_list(names):
    expected = _expected_clean(names)
    if not expected:
        with pytest.raises(UsageError, match="no labels"):
            clean_labels(names)
        return
    got = clean_labels(names)
    assert got == expected
    assert len(set(got)) == len(got)
    for n in got:
        assert n == n.strip() and "  " not in n and unicodedata.is_normalized("NFC", n)


@SETTINGS
@given(names=st.lists(st.text(NAME_CHAR, min_size=1, max_size=10), min_size=1, max_size=15),
       pads=st.lists(st.sampled_from(["", " ", "  ", "\t", ",", ", ,"]), min_size=32, max_size=32))
def test_labels_flag_splitting(names, pads):
    """``--labels "a, b,,a"``: names typed with any padding and empty entries come back
    cleaned, in first-occurrence order; no names at all is a usage error."""
    text = ",".join(pads[i % 32] + n + pads[(i + 7) % 32] for i, n in enumerate(names))
    args = argparse.Namespace(labels=text, labels_file=None)
    parts = read_labels(args)
    expected = _expected_clean(text.split(","))
    if not expected:
        with pytest.raises(UsageError):
            clean_labels(parts)
        return
    assert clean_labels(parts) == expected
    assert set(expected) >= {_norm(n) for n in names if _norm(n)} - {""}


@SETTINGS
@given(names=st.lists(st.text(NAME_CHAR, min_size=1, max_size=10), min_size=1, max_size=15),
       bom=st.booleans(), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       blank_every=st.integers(1, 4))
def test_labels_file_bom_crlf_blank_lines(names, bom, newline, blank_every):
    lines = []
    for i, n in enumerate(names):
        lines.append(n)
        if i % blank_every == 0:
            lines.append("   ")
    data = ("\ufeff" if bom else "") + newline.join(lines) + newline
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "words.txt"
        path.write_bytes(data.encode("utf-8"))
        parts = read_labels(argparse.Namespace(labels=None, labels_file=str(path)))
    expected = _expected_clean(names)
    if not expected:
        with pytest.raises(UsageError):
            clean_labels(parts)
        return
    assert clean_labels(parts) == expected
    assert not any(p.startswith("\ufeff") for p in parts)


@SETTINGS
@given(st.lists(st.text(ANY_CHAR, min_size=1, max_size=8), min_size=1, max_size=10, unique=True))
@example(["a\u2028b"])    # a line separator inside a name
@example([" padded"])     # would come back stripped
def test_label_list_write_read_round_trip(names):
    """``labels.txt``: whatever write_label_list accepts reads back identically."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "labels.txt"
        try:
            write_label_list(path, names)
        except (DataError, UsageError):
            return
        assert read_label_list(path) == names


# ---------------------------------------------------------------- CSV / JSONL split files

LABEL = st.text(NAME_CHAR, min_size=1, max_size=8).map(str.strip).filter(
    lambda s: bool(s) and not s.startswith("-"))
SEGMENT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"),
                  min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@st.composite
def splits(draw):
    vocab = draw(st.lists(LABEL, min_size=1, max_size=6, unique=True))
    n = draw(st.integers(0, 8))
    images = []
    for _ in range(n):
        segs = draw(st.lists(SEGMENT, min_size=1, max_size=3))
        images.append("/".join(segs))
    targets = np.array(draw(st.lists(st.lists(st.sampled_from([-1, 0, 1]), min_size=len(vocab),
                                               max_size=len(vocab)), min_size=n, max_size=n)),
                       dtype=np.int8).reshape(n, len(vocab))
    return vocab, images, targets


@SETTINGS
@given(data=splits(), suffix=st.sampled_from([".csv", ".jsonl"]))
@example(data=(["dog"], ["caf\x85.png", "x\u2028y.png"], np.array([[1], [-1]], dtype=np.int8)), suffix=".jsonl")
@example(data=(["dog"], [" lead.png"], np.array([[1]], dtype=np.int8)), suffix=".csv")
def test_split_write_read_round_trip(data, suffix):
    """write_csv_split either refuses (UsageError/UnsafeFileError) or the file reads back
    to the same images and targets (unlisted="unknown" keeps 1, -1 and 0 apart)."""
    vocab, images, targets = data
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        split = MultiLabelSplit(images, targets, vocab, root, "prop")
        path = root / f"train{suffix}"
        try:
            write_csv_split(path, split, unlisted="unknown")
        except (UsageError, UnsafeFileError):
            return
        back = load_csv_split(path, vocab, root=root, unlisted="unknown")
    assert back.images == [posixpath.normpath(i) for i in images]
    np.testing.assert_array_equal(back.targets, targets)


VOCAB = ["dog", "cat", "red car", "café"]
GOOD_IMAGES = ["a.png", "sub/b.jpg", "dir with space/c.png", "ünï/ç.png"]
# (kind, image, labels field) of rows that must be refused, and the message they give
BAD_ROWS = {
    "unknown label": ("a.png", "dog|wolf", "is not in the label list"),
    "both signs": ("a.png", "dog|-dog", "both positive and negative"),
    "lone dash": ("a.png", "cat|-", "'-' without a label name"),
    "double dash": ("a.png", "--dog", "starts with '-'"),
    "escape": ("../a.png", "dog", "escapes the dataset root"),
    "absolute": ("/etc/passwd", "dog", "absolute path"),
    "drive": ("C:\\x.png", "dog", "absolute path"),
    "empty image": ("", "dog", "empty path"),
    "extra field": ("a.png", "dog", "malformed line"),
}


@st.composite
def csv_rows(draw):
    """A list of rows; each either ('ok', image, pos, neg) or ('bad', kind)."""
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            pos = draw(st.lists(st.sampled_from(VOCAB), unique=True, max_size=3))
            neg = draw(st.lists(st.sampled_from([v for v in VOCAB if v not in pos]), unique=True, max_size=2))
            rows.append(("ok", draw(st.sampled_from(GOOD_IMAGES)), pos, neg))
        else:
            rows.append(("bad", draw(st.sampled_from(sorted(BAD_ROWS)))))
    return rows


def _write_rows(path: Path, rows, blank_lines: bool, crlf: bool, jsonl: bool) -> list[int]:
    """Write ``rows``; returns the line number of each row."""
    nl = "\r\n" if crlf else "\n"
    lines, numbers = ([] if jsonl else ["image,labels"]), []
    for row in rows:
        if blank_lines:
            lines.append("")
        if row[0] == "ok":
            _, image, pos, neg = row
            labels = pos + ["-" + n for n in neg]
            extra = []
        else:
            image, field, _ = BAD_ROWS[row[1]]
            labels, extra = field.split("|"), (["surplus"] if row[1] == "extra field" else [])
        if jsonl:
            obj = {"image": image, "labels": labels}
            if extra:  # JSON objects have no field count: make the line not JSON instead
                lines.append(json.dumps(obj)[:-1])
            else:
                lines.append(json.dumps(obj, ensure_ascii=False))
        else:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow([image, "|".join(labels), *extra])
            lines.append(buf.getvalue())
        numbers.append(len(lines))
    path.write_bytes((nl.join(lines) + nl).encode("utf-8"))
    return numbers


@SETTINGS
@given(rows=csv_rows(), blank_lines=st.booleans(), crlf=st.booleans(), jsonl=st.booleans())
def test_csv_jsonl_rows_parse_or_name_file_and_line(rows, blank_lines, crlf, jsonl):
    """Every row either parses to exactly its targets or is refused with a message naming
    ``file:line`` (collected with problems=[], raised as the first error without)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("train.jsonl" if jsonl else "train.csv")
        numbers = _write_rows(path, rows, blank_lines, crlf, jsonl)
        problems: list[str] = []
        split = load_csv_split(path, VOCAB, problems=problems)
        good = [(r, n) for r, n in zip(rows, numbers) if r[0] == "ok"]
        bad = [(r, n) for r, n in zip(rows, numbers) if r[0] == "bad"]
        assert split.images == [r[1] for r, _ in good]
        for (_, _, pos, neg), target in zip((r for r, _ in good), split.targets):
            expected = np.full(len(VOCAB), -1, dtype=np.int8)
            expected[[VOCAB.index(p) for p in pos]] = 1
            assert (target == expected).all()
        assert len(problems) == len(bad)
        for ((_, kind), n), msg in zip(sorted(bad, key=lambda b: b[1]), sorted(problems, key=lambda m: int(
                re.match(re.escape(str(path)) + r":(\d+):", m).group(1)))):
            assert msg.startswith(f"{path}:{n}: "), (msg, n)
            if not (jsonl and kind == "extra field"):
                assert BAD_ROWS[kind][2] in msg, (kind, msg)
        if bad:  # without problems=[] the first bad row found raises, naming its line
            with pytest.raises((DataError, UnsafeFileError)) as err:
                load_csv_split(path, VOCAB)
            m = re.match(re.escape(str(path)) + r":(\d+): ", str(err.value))
            assert m and int(m.group(1)) in {n for _, n in bad}, str(err.value)
        else:
            assert load_csv_split(path, VOCAB).images == split.images


@SETTINGS
@given(body=st.text(ANY_CHAR, max_size=200), jsonl=st.booleans(), header=st.booleans())
@example(body="[" * 5000, jsonl=True, header=False)            # nested deeper than the JSON parser's stack
@example(body='"a.png",dog\n"unclosed,cat\n', jsonl=False, header=True)
@example(body="a.png,\x00dog\n", jsonl=False, header=True)
@example(body='{"image": "a.png", "labels": ["a|b"]}', jsonl=True, header=False)
@example(body="a.png,--x\n", jsonl=False, header=True)          # labels inferred: '-x' is not a name
def test_any_text_parses_or_raises_a_named_data_error(body, jsonl, header):
    """Arbitrary bytes of text never raise anything but a SigrlError that names the file
    (and, for a row, its line); with problems=[] only file-level problems raise."""
    text = ("image,labels\n" if header and not jsonl else "") + body
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("test.jsonl" if jsonl else "test.csv")
        path.write_text(text, encoding="utf-8")
        for vocab in (VOCAB, None):  # given label list, or inferred from the file
            try:
                split = load_csv_split(path, vocab)
            except SigrlError as err:
                assert isinstance(err, (DataError, UnsafeFileError))
                assert str(err).startswith(str(path)) and "\n" not in str(err)
            else:
                assert split.targets.shape == (len(split.images), len(split.labels))
                assert set(np.unique(split.targets)) <= {-1, 1}
            problems: list[str] = []
            try:
                load_csv_split(path, vocab, problems=problems)
            except SigrlError as err:
                # only whole-file problems are left to raise when rows are collected
                assert re.match(re.escape(str(path)) + r"(:\d+)?: (empty file|header must|malformed CSV)",
                                str(err)), str(err)
            for msg in problems:
                assert re.match(re.escape(str(path)) + r":\d+: ", msg), msg


# ---------------------------------------------------------------- prompt templates


@SETTINGS
@given(st.lists(st.one_of(st.text(ANY_CHAR, max_size=20),
                          st.sampled_from(["a photo of a {}.", "# comment {}", "{}", "{} and {}", "",
                                           "  There is a {} in the scene.  ", "no label slot", "{{}}"])),
                max_size=8),
       st.booleans(), st.sampled_from(["\n", "\r\n"]))
def test_parse_templates_any_text(lines, bom, newline):
    text = ("\ufeff" if bom else "") + newline.join(lines)
    expected, first_bad = [], None
    for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1:
            first_bad = first_bad or n
            continue
        expected.append(line)
    if first_bad:
        with pytest.raises(UsageError, match=rf"^prompts\.txt:{first_bad}: a template needs exactly one"):
            parse_templates(text, "prompts.txt")
    elif not expected:
        with pytest.raises(UsageError, match=r"^prompts\.txt: no templates"):
            parse_templates(text, "prompts.txt")
    else:
        got = parse_templates(text, "prompts.txt")
        assert list(got) == expected
        prompts = PromptSet("p", got).format("zebra {}")  # a label may itself hold "{}"
        assert len(prompts) == len(expected)
        for t, p in zip(got, prompts):
            assert p.count("zebra {}") == t.count("zebra {}") + 1


# ---------------------------------------------------------------- paths read from list files


@SETTINGS
@given(st.lists(st.sampled_from(list("ab./\\:C ") + ["..", "\x00", "\\\\"]), max_size=14).map("".join))
def test_safe_relpath_never_leaves_the_root(raw):
    try:
        rel = safe_relpath(raw)
    except UnsafeFileError as err:
        assert "\n" not in str(err)
        return
    assert not rel.startswith("/") and not re.match(r"^[A-Za-z]:", rel) and "\x00" not in rel
    joined = posixpath.normpath(posixpath.join("/root/ds", rel))
    assert joined.startswith("/root/ds/"), (raw, rel)
