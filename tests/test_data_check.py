"""``sigrl data check``: real small datasets on disk, through the CLI entry point."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from PIL import Image

from sigrl.cli import main
from sigrl.data.check import check_dataset

from test_data_coco import make_coco
from test_data_nuswide import IMAGES as NUS_IMAGES
from test_data_nuswide import make_biam, make_official
from test_data_voc import make_voc

SHARED_NUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nus-wide"


def png(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, format="JPEG")
    return path


def run_cli(capsys, *args):
    code = main(["data", "check", *args, "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def make_csv(root: Path, n_train=4, n_test=3) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("red\ngreen\nblue\n")
    (root / "unseen.txt").write_text("blue\n")
    train = [f"img/tr{i}.png" for i in range(n_train)]
    test = [f"img/te{i}.png" for i in range(n_test)]
    for p in train + test:
        png(root / p)
    (root / "train.csv").write_text("image,labels\n" + "".join(f"{p},red\n" for p in train))
    (root / "test.csv").write_text("image,labels\n" + "".join(f"{p},green|blue\n" for p in test))
    return root


def test_clean_csv_dataset(tmp_path, capsys):
    root = make_csv(tmp_path / "ds")
    code, out, err = run_cli(capsys, "csv", str(root), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["seen_labels"] == 2 and rep["unseen_labels"] == 1
    assert rep["train_images"] == 4 and rep["test_images"] == 3
    assert rep["problems"] == [] and rep["usable"] is True and rep["checked_images"] == 7
    code, out, _ = run_cli(capsys, "csv", str(root))
    assert code == 0 and "usable, no problems found" in out and "2 seen, 1 unseen" in out


def test_csv_with_problems_is_usable(tmp_path, capsys):
    root = make_csv(tmp_path / "ds")
    (root / "img" / "tr1.png").unlink()                      # listed but missing
    (root / "img" / "tr2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # not decodable
    with open(root / "test.csv", "a") as fh:
        fh.write("img/te0.png,purple\n")                     # unknown label, line 5
        fh.write("img/te9.png,red,extra\n")                  # malformed, line 6
        fh.write("img/te0.png,red\n")                        # listed twice
    code, out, err = run_cli(capsys, "csv", str(root), "--json")
    assert code == 1 and err == ""
    rep = json.loads(out)
    assert rep["train_images"] == 2 and rep["test_images"] == 4
    probs = "\n".join(rep["problems"])
    assert f"{root / 'img' / 'tr1.png'}: listed in {root / 'train.csv'} but missing" in probs
    assert f"{root / 'img' / 'tr2.png'}: not decodable" in probs
    assert f"{root / 'test.csv'}:5: label 'purple' is not in the label list" in probs
    assert f"{root / 'test.csv'}:6: malformed line" in probs
    assert "listed more than once (first: img/te0.png)" in probs
    code, out, _ = run_cli(capsys, "csv", str(root))
    assert code == 1 and "usable with 5 problems" in out


def test_csv_missing_required_file(tmp_path, capsys):
    root = make_csv(tmp_path / "ds")
    (root / "test.csv").unlink()
    code, out, err = run_cli(capsys, "csv", str(root), "--json")
    assert code == 2
    assert json.loads(out)["usable"] is False
    assert f"{root / 'test.csv'}: file not found" in err


def test_all_images_missing_is_not_usable(tmp_path, capsys):
    root = make_csv(tmp_path / "ds")
    for p in (root / "img").glob("te*.png"):
        p.unlink()
    code, out, err = run_cli(capsys, "csv", str(root))
    assert code == 2 and "no usable test image" in err and "NOT USABLE" in out


def test_max_images_caps_the_check(tmp_path, capsys):
    root = make_csv(tmp_path / "ds", n_train=30, n_test=5)
    code, out, _ = run_cli(capsys, "csv", str(root), "--json", "--max-images", "3")
    rep = json.loads(out)
    assert code == 0 and rep["checked_images"] == 6 and rep["listed_images"] == {"train": 30, "test": 5}
    assert any("only 6 image files checked" in n for n in rep["notes"])
    assert main(["data", "check", "csv", str(root), "--max-images", "-1"]) == 2


def test_progress_bar_on_stderr(tmp_path, capsys):
    root = make_csv(tmp_path / "ds")
    rep = check_dataset("csv", root, progress=True)
    assert rep.exit_code == 0
    assert "checking images" in capsys.readouterr().err


def test_nuswide_official(tmp_path, capsys):
    root = make_official(tmp_path / "nus")
    for folder, name in NUS_IMAGES:
        jpg(root / "Flickr" / folder / name)
    code, out, err = run_cli(capsys, "nuswide", str(root), "--json")
    rep = json.loads(out)
    assert code == 0, rep
    assert rep["layout"] == "official" and rep["seen_labels"] == 3 and rep["unseen_labels"] == 3
    assert rep["train_images"] == 1 and rep["test_images"] == 3
    assert any("925 / 81" in n for n in rep["notes"])


def test_nuswide_biam_missing_images_and_hostile_pickle(tmp_path, capsys):
    root = make_biam(tmp_path / "nus")
    jpg(root / "Flickr" / "actor" / "0001_11.jpg")
    jpg(root / "Flickr" / "actor" / "0003_33.jpg")
    code, out, _ = run_cli(capsys, "nuswide", str(root), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["layout"] == "biam" and rep["test_images"] == 1
    assert any("airport_terminal/0002_22.jpg: listed in" in p and "test_img_names.pkl but missing" in p
               for p in rep["problems"])

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "test_img_names.pkl").write_bytes(pickle.dumps({"img_names": [Evil()]}))
    code, out, err = run_cli(capsys, "nuswide", str(root))
    assert code == 2 and "test_img_names.pkl" in err and ("posix.system" in err or "os.system" in err)
    assert not marker.exists()


def test_nuswide_hostile_label_embeddings(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    root = make_biam(tmp_path / "nus")
    for rel in ("actor/0001_11.jpg", "actor/0003_33.jpg", "airport_terminal/0002_22.jpg"):
        jpg(root / "Flickr" / rel)
    assert run_cli(capsys, "nuswide", str(root))[0] == 0
    marker = tmp_path / "pwned_pt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"emb": Evil()}, root / "label_emb.pt")
    code, _, err = run_cli(capsys, "nuswide", str(root))
    assert code == 2 and "label_emb.pt" in err and not marker.exists()


def test_voc(tmp_path, capsys):
    root = make_voc(tmp_path / "VOC2007")
    for i in ("000001", "000002", "000003"):
        jpg(root / "JPEGImages" / f"{i}.jpg")
    code, out, _ = run_cli(capsys, "voc", str(tmp_path), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["seen_labels"] == 20 and rep["unseen_labels"] == 0
    assert rep["train_images"] == 3 and rep["test_images"] == 1 and rep["layout"] == "VOC2007"
    (root / "Annotations" / "000003.xml").write_text("<annotation>")
    code, out, _ = run_cli(capsys, "voc", str(root), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["train_images"] == 2
    assert any("000003.xml: malformed XML" in p for p in rep["problems"])


def test_coco(tmp_path, capsys):
    root = make_coco(tmp_path / "coco", "val2014")
    make_coco(root, "train2014")
    for split in ("train2014", "val2014"):
        for i in (10, 11, 12):
            jpg(root / split / f"COCO_val2014_{i:012d}.jpg")
    code, out, _ = run_cli(capsys, "coco", str(root), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["seen_labels"] == 3 and rep["train_images"] == 3 and rep["test_images"] == 3
    (root / "annotations" / "instances_train2014.json").unlink()
    code, _, err = run_cli(capsys, "coco", str(root))
    assert code == 2 and "instances_train2014.json: file not found" in err


def test_not_a_directory(tmp_path, capsys):
    code, _, err = run_cli(capsys, "voc", str(tmp_path / "none"))
    assert code == 2 and "not a directory" in err


def test_real_nuswide_files(capsys):
    if not (SHARED_NUS / "test_img_names.pkl").is_file():
        pytest.skip(f"real NUS-WIDE files not present at {SHARED_NUS}")
    # the shared folder holds the label lists and the test names, no train names / h5 / images
    code, out, err = run_cli(capsys, "nuswide", str(SHARED_NUS), "--json", "--max-images", "10")
    assert code == 2
    assert "img_names.pkl: file not found" in err
