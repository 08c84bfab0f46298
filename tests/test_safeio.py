"""Safe IO: restricted unpickler, path joins, atomic writes, weights-only torch loads."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from sigrl.errors import DataError, SigrlError, UnsafeFileError
from sigrl.safeio import (
    atomic_write_bytes,
    atomic_write_text,
    load_torch_weights_only,
    safe_join,
    safe_load_pickle,
    safe_relpath,
)

SHARED_NUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nus-wide"


class _Hostile:
    """Unpickling this calls os.system to create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalHostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('x')",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_containers_load(tmp_path, protocol):
    obj = {"img_names": ["a_0001_1.jpg", "b_c_0002_2.jpg"], "n": 3, "x": 1.5, "ok": True,
           "none": None, "t": (1, "two"), "raw": b"\x00\x01", "nested": [{"k": [1, 2]}]}
    p = tmp_path / "names.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    if protocol < 3:
        # protocols 0-2 encode bytes through the global _codecs.encode: refused, safely
        with pytest.raises(UnsafeFileError, match="_codecs.encode"):
            safe_load_pickle(p)
        del obj["raw"]
        p.write_bytes(pickle.dumps(obj, protocol=protocol))
    assert safe_load_pickle(p) == obj


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickle_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"img_names": [_Hostile(marker)]}, protocol=protocol))
    with pytest.raises(UnsafeFileError) as info:
        safe_load_pickle(p)
    msg = str(info.value)
    assert str(p) in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    # the same file through plain pickle really would run the command (the test is real)
    pickle.loads(p.read_bytes())
    assert marker.exists()


def test_eval_and_class_globals_refused(tmp_path):
    marker = tmp_path / "pwned2"
    p = tmp_path / "evil2.pkl"
    p.write_bytes(pickle.dumps(_EvalHostile(marker)))
    with pytest.raises(UnsafeFileError, match=r"builtins\.eval"):
        safe_load_pickle(p)
    assert not marker.exists()
    p.write_bytes(pickle.dumps(Path("x")))  # a harmless class is still a global: refused
    with pytest.raises(UnsafeFileError, match="pathlib"):
        safe_load_pickle(p)
    p.write_bytes(pickle.dumps({1, 2}, protocol=2))  # set needs builtins.set before protocol 4
    with pytest.raises(UnsafeFileError, match=r"builtin__\.set"):
        safe_load_pickle(p)


def test_persistent_id_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if obj == "secret" else None

    p = tmp_path / "pid.pkl"
    with open(p, "wb") as fh:
        P(fh, protocol=2).dump(["secret"])
    with pytest.raises(UnsafeFileError, match="persistent id"):
        safe_load_pickle(p)


def test_missing_and_corrupt_pickles_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        safe_load_pickle(tmp_path / "none.pkl")
    bad = tmp_path / "trunc.pkl"
    bad.write_bytes(pickle.dumps(list(range(100)))[:-10])
    with pytest.raises(DataError, match="trunc.pkl"):
        safe_load_pickle(bad)
    assert issubclass(UnsafeFileError, SigrlError)


def test_real_nuswide_pickle_loads():
    p = SHARED_NUS / "test_img_names.pkl"
    if not p.is_file():
        pytest.skip(f"real NUS-WIDE files not present at {SHARED_NUS}")
    obj = safe_load_pickle(p)
    assert set(obj) == {"img_names"}
    assert len(obj["img_names"]) == 107_859
    assert all(isinstance(n, str) for n in obj["img_names"][:1000])


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Flickr\\actor\\0001_2124494179.jpg", "Flickr/actor/0001_2124494179.jpg"),
        ("JPEGImages/000005.jpg", "JPEGImages/000005.jpg"),
        ("./a//b/./c.png", "a/b/c.png"),
        ("a/../b.png", "b.png"),
    ],
)
def test_safe_relpath_normalises(raw, expected):
    assert safe_relpath(raw) == expected


@pytest.mark.parametrize(
    "raw", ["/etc/passwd", "C:\\ImageData\\x.jpg", "c:/x.jpg", "\\\\host\\share\\x.jpg",
            "../x.jpg", "a/../../x.jpg", "..\\..\\x.jpg", "", "  ", ".", "a/.."]
)
def test_safe_relpath_refuses(raw):
    with pytest.raises(UnsafeFileError):
        safe_relpath(raw, where="train.csv:3")


def test_safe_join_names_location(tmp_path):
    assert safe_join(tmp_path, "x\\y.jpg") == tmp_path / "x" / "y.jpg"
    with pytest.raises(UnsafeFileError, match=r"^train\.csv:7: .*escapes"):
        safe_join(tmp_path, "../../etc/passwd", where="train.csv:7")


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp left behind
    mode = target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails during the write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    good = tmp_path / "label_emb.pt"
    torch.save({"emb": torch.arange(6.0).reshape(2, 3), "names": ["a", "b"]}, good)
    obj = load_torch_weights_only(good)
    assert obj["names"] == ["a", "b"] and obj["emb"].shape == (2, 3)

    marker = tmp_path / "pwned_pt"
    bad = tmp_path / "bad.pt"
    torch.save({"x": _Hostile(marker)}, bad)
    with pytest.raises(UnsafeFileError, match=r"bad\.pt.*system"):
        load_torch_weights_only(bad)
    assert not marker.exists()

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello world")
    with pytest.raises(DataError, match="junk.pt"):
        load_torch_weights_only(junk)
    with pytest.raises(DataError, match="not found"):
        load_torch_weights_only(tmp_path / "absent.pt")
