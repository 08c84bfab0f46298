"""NUS-WIDE: official and BiAM/MKT layouts (tiny files written here) and the real split files."""
from __future__ import annotations

import os
import re
import pickle
from pathlib import Path

import numpy as np
import pytest

from sigrl.data.nuswide import (
    detect_layout,
    load_label_embeddings,
    load_nuswide,
    name_to_relpath,
    nuswide_labels,
    read_image_names,
    relpath_to_name,
)
from sigrl.errors import DataError, UnsafeFileError

SHARED_NUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nus-wide"


def need_real(name: str) -> Path:
    p = SHARED_NUS / name
    if not p.is_file():
        pytest.skip(f"real NUS-WIDE file {p} not present")
    return p


def w(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


# tags: sky, dog, beach, car, cat ; concepts: beach, cat, whales (whales is not a tag)
TAGS = ["sky", "dog", "beach", "car", "cat"]
CONCEPTS = ["beach", "whales", "cat"]
SEEN = ["sky", "dog", "car"]
IMAGES = [("actor", "0001_11.jpg"), ("airport_terminal", "0002_22.jpg"), ("actor", "0003_33.jpg"),
          ("zebra", "0004_44.jpg")]
TAG_ROWS = [[1, 0, 1, 0, 0],   # sky beach  -> seen positive: sky
            [0, 0, 1, 0, 1],   # beach cat  -> no seen positive (dropped from train)
            [0, 1, 0, 1, 1],   # dog car cat
            [0, 0, 0, 0, 0]]
CONCEPT_ROWS = {"beach": [1, 1, 0, 0], "whales": [0, 0, 0, 1], "cat": [0, 1, 1, 0]}


def make_official(root: Path, *, crlf=True) -> Path:
    nl = "\r\n" if crlf else "\n"
    w(root / "NUS_WID_Tags" / "TagList1k.txt", nl.join(TAGS) + nl)
    w(root / "ConceptsList" / "Concepts81.txt", nl.join(CONCEPTS) + nl)
    w(root / "ImageList" / "Imagelist.txt",
      "".join(f"C:\\ImageData\\Flickr\\{a}\\{b}{nl}" for a, b in IMAGES))
    w(root / "ImageList" / "TrainImagelist.txt", "".join(f"{a}\\{b}{nl}" for a, b in IMAGES[:2]))
    w(root / "ImageList" / "TestImagelist.txt", "".join(f"{a}\\{b}{nl}" for a, b in IMAGES[1:]))
    w(root / "NUS_WID_Tags" / "AllTags1k.txt", "".join("\t".join(map(str, r)) + "\t" + nl for r in TAG_ROWS))
    for c, vals in CONCEPT_ROWS.items():
        w(root / "AllLabels" / f"Labels_{c}.txt", "".join(f"{v}{nl}" for v in vals))
    return root


def test_official_layout(tmp_path):
    root = make_official(tmp_path)
    assert detect_layout(root) == "official"
    assert nuswide_labels(root) == (SEEN, CONCEPTS)
    ds = load_nuswide(root)
    assert ds.seen == SEEN and ds.unseen == CONCEPTS
    # train = images 0, 1; image 1 has no seen positive -> dropped
    assert ds.train.images == ["Flickr/actor/0001_11.jpg"]
    assert ds.train.labels == SEEN
    np.testing.assert_array_equal(ds.train.targets, [[1, -1, -1]])
    # test = images 1, 2, 3, all kept; columns sky dog car | beach whales cat
    assert ds.test.images == ["Flickr/airport_terminal/0002_22.jpg", "Flickr/actor/0003_33.jpg",
                              "Flickr/zebra/0004_44.jpg"]
    assert ds.test.labels == SEEN + CONCEPTS
    np.testing.assert_array_equal(
        ds.test.targets,
        [[-1, -1, -1, 1, -1, 1],
         [-1, 1, 1, -1, -1, 1],
         [-1, -1, -1, -1, 1, -1]],
    )
    assert ds.test.path(0) == root / "Flickr" / "airport_terminal" / "0002_22.jpg"
    ds2 = load_nuswide(root, image_root=tmp_path / "imgs")
    assert ds2.test.path(0) == tmp_path / "imgs" / "Flickr" / "airport_terminal" / "0002_22.jpg"


def test_official_concepts_at_root_and_missing_files(tmp_path):
    root = make_official(tmp_path)
    (root / "ConceptsList" / "Concepts81.txt").rename(root / "Concepts81.txt")
    assert load_nuswide(root).unseen == CONCEPTS
    (root / "AllLabels" / "Labels_whales.txt").unlink()
    with pytest.raises(DataError, match=r"Labels_whales.txt: file not found"):
        load_nuswide(root)
    (root / "NUS_WID_Tags" / "AllTags1k.txt").unlink()
    with pytest.raises(DataError, match=r"AllTags1k.txt: file not found"):
        load_nuswide(root)


def test_official_malformed_rows(tmp_path):
    root = make_official(tmp_path, crlf=False)
    w(root / "NUS_WID_Tags" / "AllTags1k.txt", "1 0 1 0 0\n0 0 1 0\n0 1 0 1 1\n0 0 0 0 0\n")
    with pytest.raises(DataError, match=r"AllTags1k.txt:2: malformed line: 4 values, expected 5"):
        load_nuswide(root)
    w(root / "NUS_WID_Tags" / "AllTags1k.txt", "1 0 1 0 0\n0 0 1 0 1\n0 1 0 1 1\n")
    with pytest.raises(DataError, match=r"AllTags1k.txt: 3 lines, expected 4"):
        load_nuswide(root)
    make_official(root)
    w(root / "AllLabels" / "Labels_cat.txt", "0\n1\nx\n0\n")
    with pytest.raises(DataError, match=r"Labels_cat.txt:3: malformed line"):
        load_nuswide(root)
    make_official(root)
    w(root / "ImageList" / "TestImagelist.txt", "actor\\0009_99.jpg\n")
    with pytest.raises(DataError, match=r"TestImagelist.txt: image actor/0009_99.jpg .* is not in"):
        load_nuswide(root)


# --------------------------------------------------------------------------- BiAM


def make_biam(root: Path, *, encoding="pm1", test_width=3) -> Path:
    h5py = pytest.importorskip("h5py")
    w(root / "Concepts81.txt", "\n".join(CONCEPTS) + "\n")
    w(root / "Concepts925.txt", "\n".join(SEEN) + "\n")
    train = ["actor_0001_11.jpg", "airport_terminal_0002_22.jpg"]
    test = ["airport_terminal_0002_22.jpg", "actor_0003_33.jpg"]
    (root / "img_names.pkl").write_bytes(pickle.dumps({"img_names": train}))
    (root / "test_img_names.pkl").write_bytes(pickle.dumps({"img_names": test}))
    seen = {"actor_0001_11.jpg": [1, -1, -1], "airport_terminal_0002_22.jpg": [-1, -1, -1],
            "actor_0003_33.jpg": [-1, 1, 0]}
    unseen = {"airport_terminal_0002_22.jpg": [1, -1, 1], "actor_0003_33.jpg": [-1, -1, 1]}

    def enc(v):
        v = np.asarray(v, dtype=np.int8)
        return np.where(v == 1, 1, 0).astype(np.int8) if encoding == "01" else v

    (root / "features").mkdir(exist_ok=True)
    with h5py.File(root / "features" / "nus_wide_train.h5", "w") as f:
        for n in train:
            f.create_dataset(f"{n}-features", data=np.zeros(4, np.float32))
            f.create_dataset(f"{n}-labels", data=enc(seen[n]))
    with h5py.File(root / "features" / "nus_wide_test.h5", "w") as f:
        for n in test:
            lab = enc(seen[n]) if test_width == 3 else np.concatenate([enc(seen[n]), enc(unseen[n])])
            f.create_dataset(f"{n}-labels", data=lab)
            f.create_dataset(f"{n}-labels_81", data=enc(unseen[n]))
    return root


@pytest.mark.parametrize("test_width", [3, 6])
def test_biam_layout_pm1(tmp_path, test_width):
    root = make_biam(tmp_path, test_width=test_width)
    assert detect_layout(root) == "biam"
    ds = load_nuswide(root)
    assert ds.train.images == ["Flickr/actor/0001_11.jpg"]  # image 2 has no seen positive
    np.testing.assert_array_equal(ds.train.targets, [[1, -1, -1]])
    assert ds.test.images == ["Flickr/airport_terminal/0002_22.jpg", "Flickr/actor/0003_33.jpg"]
    np.testing.assert_array_equal(ds.test.targets, [[-1, -1, -1, 1, -1, 1], [-1, 1, 0, -1, -1, 1]])


def test_biam_layout_01_encoding(tmp_path):
    root = make_biam(tmp_path, encoding="01")
    ds = load_nuswide(root)
    # a 0/1 file: 0 = absent
    np.testing.assert_array_equal(ds.test.targets, [[-1, -1, -1, 1, -1, 1], [-1, 1, -1, -1, -1, 1]])
    ds = load_nuswide(root, zero_means="unknown")
    np.testing.assert_array_equal(ds.test.targets, [[0, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 1]])


def test_biam_missing_key_and_bad_name(tmp_path):
    root = make_biam(tmp_path)
    (root / "test_img_names.pkl").write_bytes(
        pickle.dumps({"img_names": ["actor_0003_33.jpg", "actor_0005_55.jpg", "nonsense.jpg"]}))
    with pytest.raises(DataError, match=r"test_img_names.pkl\[2\]: image name 'nonsense.jpg'"):
        load_nuswide(root)
    problems: list[str] = []
    ds = load_nuswide(root, problems=problems)
    assert ds.test.images == ["Flickr/actor/0003_33.jpg"]
    assert len(problems) == 3  # bad name + two missing keys (-labels, -labels_81) of 0005_55
    assert any("no dataset 'actor_0005_55.jpg-labels'" in p for p in problems)


def test_biam_hostile_pickle_refused(tmp_path):
    root = make_biam(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "img_names.pkl").write_bytes(pickle.dumps({"img_names": [Evil()]}))
    with pytest.raises(UnsafeFileError, match=r"img_names.pkl.*system"):
        load_nuswide(root)
    assert not marker.exists()


def test_label_embeddings(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.ones(3, 2), tmp_path / "label_emb.pt")
    assert load_label_embeddings(tmp_path).shape == (3, 2)


def test_no_layout(tmp_path):
    with pytest.raises(DataError, match="no NUS-WIDE layout found"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="Concepts81.txt: file not found"):
        nuswide_labels(tmp_path)


def test_seen_from_concepts925_must_agree_with_taglist(tmp_path):
    w(tmp_path / "Concepts81.txt", "beach\ncat\n")
    w(tmp_path / "TagList1k.txt", "sky\nbeach\ndog\n")
    assert nuswide_labels(tmp_path) == (["sky", "dog"], ["beach", "cat"])
    w(tmp_path / "Concepts925.txt", "dog\nsky\n")
    assert nuswide_labels(tmp_path) == (["dog", "sky"], ["beach", "cat"])
    w(tmp_path / "Concepts925.txt", "dog\nsky\nmoon\n")
    with pytest.raises(DataError, match="Concepts925.txt: does not hold the tags"):
        nuswide_labels(tmp_path)


@pytest.mark.parametrize(
    "name,rel",
    [("actor_0002_174174086.jpg", "Flickr/actor/0002_174174086.jpg"),
     ("airport_terminal_0012_32.jpg", "Flickr/airport_terminal/0012_32.jpg"),
     ("a_b_c_0001_1.JPG", "Flickr/a_b_c/0001_1.JPG")],
)
def test_name_mapping(name, rel):
    assert name_to_relpath(name) == rel
    assert relpath_to_name(rel) == name


@pytest.mark.parametrize("bad", ["actor.jpg", "actor_12.jpg", "_0001_1.jpg", "..__0001_1.jpg/x", 5])
def test_bad_names(bad):
    with pytest.raises(DataError):
        name_to_relpath(bad, where="x.pkl[0]")


# ------------------------------------------------------------------- the real files


def test_real_seen_unseen_split():
    need_real("TagList1k.txt")
    need_real("Concepts81.txt")
    seen, unseen = nuswide_labels(SHARED_NUS)
    assert len(seen) == 925 and len(unseen) == 81
    tags = [t.strip() for t in (SHARED_NUS / "TagList1k.txt").read_text().splitlines() if t.strip()]
    assert sorted(set(unseen) - set(tags)) == ["computer", "fire", "map", "swimmers", "tattoo", "whales"]
    assert not set(seen) & set(unseen)
    assert len(seen) + len(unseen) == 1006


def test_real_test_names_map_to_paths():
    p = need_real("test_img_names.pkl")
    names = read_image_names(p)
    assert len(names) == 107_859 and len(set(names)) == 107_859
    rels = [name_to_relpath(n) for n in names]
    assert all(r.startswith("Flickr/") and r.count("/") == 2 for r in rels)
    assert all(relpath_to_name(r) == n for r, n in zip(rels[:5000], names[:5000]))
    folders = {r.split("/")[1] for r in rels}
    assert "airport_terminal" in folders and "actor" in folders
    assert len(folders) == 698
    # the file part is always <4 digits>_<flickr id>.jpg: the folder keeps every other "_"
    assert all(re.fullmatch(r"\d{4}_\d+\.jpg", r.split("/")[2]) for r in rels)
    assert rels[0] == "Flickr/actor/0002_174174086.jpg"
    assert detect_layout(SHARED_NUS) == "biam"
