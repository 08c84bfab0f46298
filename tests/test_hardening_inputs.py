"""Bad-input campaign through the real command line: every kind of file a scraped folder,
a half-downloaded dataset or a hand-written label list holds, across ``sigrl tag``,
``sigrl data check`` (csv, voc, coco, nuswide) and ``sigrl bench spml|partial``.

The contract (sigrl/errors.py): a user-caused problem gives one line naming the input
and what is wrong, the other inputs are still processed, and the exit code is 0 (all
done), 1 (done, some inputs skipped / problems found) or 2 (usage error, unusable
input) -- never a traceback without --debug.

Kinds already covered elsewhere are not repeated here: tests/test_tag.py (zero-byte,
text-as-image, truncated PNG, bomb, 16-bit, 1x1, missing through the CLI),
tests/test_images.py (load_image of CMYK, palette, alpha, EXIF, bad files),
tests/test_data_check.py / test_data_csv.py (malformed CSV rows, hostile NUS pickle).
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigrl.cli import main
from sigrl.images import MAX_ASPECT, load_image

from conftest import write_shape_image
from test_data_check import jpg, make_csv, png
from test_data_coco import make_coco
from test_data_nuswide import make_biam
from test_data_voc import make_voc

REPO = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def tag(tiny_clip_files, capsys, *args):
    cfg, w = map(str, tiny_clip_files)
    return run(["tag", *args, "--model", cfg, "--pretrained", w], capsys)


def one_line_error(err: str, *words: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ====================================================================== sigrl tag: images


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A small real PNG whose header claims ``width x height`` (CRC fixed): what a
    decompression bomb looks like to a reader, without allocating it here."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 7).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def odd_valid_images(d: Path) -> dict[str, Path]:
    """Files that are valid images in unusual forms; each must be tagged."""
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(files.setdefault("cmyk", d / "cmyk.jpg"))
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 200, 20, 20] + [0, 0, 0] * 254)
    pal.save(files.setdefault("palette_alpha", d / "palette_alpha.png"), transparency=0)
    Image.new("LA", (40, 30), (90, 128)).save(files.setdefault("gray_alpha", d / "gray_alpha.png"))
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(files.setdefault("sixteen_tiff", d / "sixteen.tif"))
    Image.fromarray(np.linspace(-3, 7, 1200, dtype=np.float32).reshape(30, 40)).save(
        files.setdefault("float_tiff", d / "float.tif"))
    Image.new("1", (40, 30), 1).save(files.setdefault("one_bit", d / "one_bit.png"))
    frames = [Image.new("P", (40, 30), i) for i in (3, 9)]
    frames[0].save(files.setdefault("animated_gif", d / "anim.gif"), save_all=True, append_images=frames[1:])
    Image.new("RGB", (40, 30), (1, 2, 3)).save(files.setdefault("webp", d / "x.webp"))
    Image.new("RGB", (4000, 3), (200, 10, 10)).save(files.setdefault("wide_4000x3", d / "wide.png"))
    Image.new("RGB", (3, 4000), (10, 10, 200)).save(files.setdefault("tall_3x4000", d / "tall.png"))
    Image.new("RGB", (200_000, 1), (10, 200, 10)).save(files.setdefault("strip_200000x1", d / "strip.png"))
    write_shape_image(files.setdefault("upper_suffix", d / "SHOUT.JPEG"), seed=4)
    write_shape_image(files.setdefault("exif_rotated", d / "rot.png"), seed=5)
    return files


def test_tag_odd_but_valid_images_are_all_tagged(tiny_clip_files, tmp_path, capsys):
    files = odd_valid_images(tmp_path / "odd")
    code, out, err = tag(tiny_clip_files, capsys, str(tmp_path / "odd"), "--labels", "red,green,blue",
                         "--format", "json", "--top-k", "3")
    assert code == 0, err
    results = {Path(r["image"]).name: r for r in json.loads(out)}
    assert set(results) == {p.name for p in files.values()}
    for r in results.values():
        scores = [t["score"] for t in r["tags"]]
        assert len(scores) == 3 and all(0 <= s <= 1 for s in scores) and r["scores"] == "independent"
    assert "skipped" not in err and "Traceback" not in err


def test_exif_rotated_file_scores_like_the_upright_image(tiny_clip_files, tmp_path, capsys):
    upright = np.random.default_rng(0).integers(0, 255, (48, 96, 3), dtype=np.uint8)
    upright[:, :48] = (250, 20, 20)  # left half red: orientation matters to the scores
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; "rotate 90 clockwise to display"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "stored_rotated.png",
                                                                      exif=exif.tobytes())
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png")
    code, out, err = tag(tiny_clip_files, capsys, str(tmp_path), "--labels", "red,green,blue,cat",
                         "--format", "json", "--top-k", "4", "--global-only")
    assert code == 0, err
    scores = {Path(r["image"]).name: {t["label"]: t["score"] for t in r["tags"]} for r in json.loads(out)}
    assert scores["stored_rotated.png"] == scores["upright.png"]
    assert scores["sideways.png"] != scores["upright.png"]  # the rotation is visible to the model


def test_transparent_palette_image_is_composited_on_white(tiny_clip_files, tmp_path, capsys):
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([255, 0, 0] * 256)  # every index red, index 0 fully transparent
    pal.save(tmp_path / "transparent.png", transparency=0)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    code, out, _ = tag(tiny_clip_files, capsys, str(tmp_path), "--labels", "a,b,c", "--format", "json",
                       "--top-k", "3")
    assert code == 0
    scores = {Path(r["image"]).name: {t["label"]: t["score"] for t in r["tags"]} for r in json.loads(out)}
    assert scores["transparent.png"] == scores["white.png"] != scores["red.png"]


def test_very_long_strips_are_cut_to_a_bounded_window(tmp_path, tiny_backbone):
    """A 200,000x1 PNG is a few hundred bytes; resizing its short side to the model's
    input would allocate 200,000 x size^2 pixels. load_image keeps the centred 16:1
    window, which holds everything the resize + centre crop shows the model."""
    Image.new("RGB", (200_000, 1), (10, 200, 10)).save(tmp_path / "strip.png")
    assert load_image(tmp_path / "strip.png").size == (MAX_ASPECT, 1)
    Image.new("RGB", (5, 90_001)).save(tmp_path / "column.png")
    assert load_image(tmp_path / "column.png").size == (5, 5 * MAX_ASPECT + 1)  # parity kept: exactly centred
    # on a moderately long image (cheap to preprocess in full) the cut changes nothing visible
    x = np.linspace(0, 1, 1200)[None, :, None] * np.ones((7, 1, 3))
    smooth = Image.fromarray((127 + 100 * np.sin(25 * x + np.arange(3))).astype(np.uint8))
    smooth.save(tmp_path / "banner.png")
    cut = load_image(tmp_path / "banner.png")
    assert cut.size == (7 * MAX_ASPECT, 7)  # 1200 - 112 is even: no parity pixel
    full = tiny_backbone.preprocess(smooth)
    assert (tiny_backbone.preprocess(cut) - full).abs().max() < 0.05
    ordinary = Image.new("RGB", (300, 20))  # 15:1 is left alone
    ordinary.save(tmp_path / "ordinary.png")
    assert load_image(tmp_path / "ordinary.png").size == (300, 20)


def bad_files(d: Path) -> dict[str, tuple[str, str]]:
    """Inputs that must be skipped: name -> (path given on the command line, reason words)."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    (d / "page.jpg").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    out["html saved as .jpg"] = (str(d / "page.jpg"), "not an image")
    write_shape_image(d / "cut.jpg", seed=7)
    Image.open(d / "cut.jpg").convert("RGB").resize((256, 256)).save(d / "cut.jpg", quality=95)
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:1500])
    out["truncated JPEG"] = (str(d / "cut.jpg"), "truncated")
    # a PNG whose header claims 20000x20000 (400 Mpx > 2x the limit): refused before decoding
    png_claiming(d / "huge.png", 20000, 20000)
    out["bomb header (>2x limit)"] = (str(d / "huge.png"), "bomb")
    (d / "folder.jpg").mkdir()
    out["directory named .jpg"] = (str(d / "folder.jpg"), "no image files")  # a folder input
    os.symlink(d / "gone.png", d / "dangling.png")
    out["dangling symlink"] = (str(d / "dangling.png"), "not found")
    (d / "empty_dir").mkdir()
    out["folder without images"] = (str(d / "empty_dir"), "no image files")
    out["glob matching nothing"] = (str(d / "nothing*.png"), "matched no files")
    Image.new("RGB", (8, 8)).save(d / "ok.png")
    (d / "png_bytes_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out["PNG signature only"] = (str(d / "png_bytes_only.png"), "not an image")
    return out


def test_tag_bad_files_are_named_and_the_rest_tagged(tiny_clip_files, tmp_path, capsys):
    bad = bad_files(tmp_path / "bad")
    good = write_shape_image(tmp_path / "good" / "fine.png")
    code, out, err = tag(tiny_clip_files, capsys, str(good), *(p for p, _ in bad.values()),
                         str(tmp_path / "bad" / "ok.png"), "--labels", "a,b", "--format", "csv")
    assert code == 1
    assert {Path(r["image"]).name for r in csv_rows(out) if not r["error"]} == {"fine.png", "ok.png"}
    lines = [l for l in err.splitlines() if "skipped" in l and ": " in l and "input(s)" not in l]
    for kind, (path, words) in bad.items():
        hits = [l for l in lines if path in l]
        assert len(hits) == 1 and words in hits[0], (kind, hits, err)
    assert f"{len(bad)} input(s) skipped" in err and "Traceback" not in err


def test_file_names_that_are_not_utf8_are_written_escaped(tiny_clip_files, tmp_path, capsys):
    """Scraped folders (ZIPs from other systems) hold names that are not UTF-8."""
    name = os.fsdecode(b"caf\xe9 \xff.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / name)
    for fmt in ("json", "csv", "table"):
        code, _, err = tag(tiny_clip_files, capsys, str(tmp_path), "--labels", "a,b", "--format", fmt,
                           "--output", str(tmp_path / f"out.{fmt}"))
        assert code == 0, err
        text = (tmp_path / f"out.{fmt}").read_text(encoding="utf-8")  # valid UTF-8
        assert "caf\\xe9 \\xff.png" in (json.loads(text)[0]["image"] if fmt == "json" else text)
    code, out, err = tag(tiny_clip_files, capsys, str(tmp_path / "*.png"), "--labels", "a")
    assert code == 0 and "caf\\xe9 \\xff.png" in out


# ====================================================================== sigrl tag: labels


def test_labels_file_bom_crlf_blank_duplicates_unicode_long(tiny_clip_files, image_dir, tmp_path, capsys):
    long_label = " ".join(["gigantic"] * 90)
    words = ["dog", "", "  cat  ", "dog", "rouge vif ✓", "café", unicodedata.normalize("NFD", "café"),
             "  ", "城市 夜景", "naïve\u00a0art", long_label, "cat"]
    path = tmp_path / "words.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(words).encode("utf-8") + b"\r\n\r\n")
    code, out, err = tag(tiny_clip_files, capsys, str(image_dir), "--labels-file", str(path),
                         "--format", "json", "--top-k", "50", "--scores", "softmax")
    assert code == 0, err
    expected = {"dog", "cat", "rouge vif ✓", "café", "城市 夜景", "naïve art", long_label}
    for r in json.loads(out):
        assert {t["label"] for t in r["tags"]} == expected
        assert abs(sum(t["score"] for t in r["tags"]) - 1) < 1e-4
    warnings = [l for l in err.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "truncated" in warnings[0] and "gigantic" in warnings[0]


@pytest.mark.parametrize("kind,content,words", [
    ("empty file", b"", "no labels"),
    ("blank lines and a BOM only", b"\xef\xbb\xbf\r\n   \r\n\t\n", "no labels"),
    ("latin-1, not UTF-8", "café\nthé\n".encode("latin-1"), "cannot read label file"),
    ("UTF-16 with BOM", "dog\ncat\n".encode("utf-16"), "cannot read label file"),
    ("missing", None, "cannot read label file"),
    ("a directory", "dir", "cannot read label file"),
])
def test_unusable_labels_file_exit_2_one_line(kind, content, words, tiny_clip_files, image_dir, tmp_path, capsys):
    path = tmp_path / "labels.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, out, err = tag(tiny_clip_files, capsys, str(image_dir), "--labels-file", str(path))
    assert code == 2 and out == ""
    one_line_error(err, words)
    if words != "no labels":
        assert str(path) in err


def test_thousands_of_labels_full_distribution(tiny_clip_files, tmp_path):
    """3,000 labels through the Tagger: every image gets a full distribution over all of
    them. (Peak memory for this case is measured by benchmarks/bench_memory_inputs.py.)"""
    script = textwrap.dedent("""
        import json, sys
        import torch
        torch.set_num_threads(1)
        from sigrl.tagging import Tagger
        from sigrl.backbones import load_backbone
        cfg, w, images = sys.argv[1:4]
        bb = load_backbone(cfg, w)
        small = Tagger([f"word{i}" for i in range(20)], backbone=bb, batch_size=16).tag([images], top_k=3)
        labels = [f"label number {i} of many" for i in range(3000)]
        tagger = Tagger(labels, backbone=bb, batch_size=16, scores="softmax")  # sums are checked below
        full = tagger.tag([images], top_k=None)
        top = tagger.tag([images], top_k=5)
        print(json.dumps({"n_small": len(small),
                          "lens": [len(r.tags) for r in full], "sums": [sum(s for _, s in r.tags) for r in full],
                          "distinct": [len({l for l, _ in r.tags}) for r in full],
                          "top": [len(r.tags) for r in top], "errors": [r.error for r in full if r.error]}))
    """)
    images = tmp_path / "imgs"
    for i in range(40):
        write_shape_image(images / f"{i:03d}.png", seed=i)
    proc = subprocess.run([sys.executable, "-c", script, *map(str, tiny_clip_files), str(images)],
                          capture_output=True, text=True, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["errors"] == [] and res["n_small"] == 40
    assert res["lens"] == [3000] * 40 and res["distinct"] == [3000] * 40 and res["top"] == [5] * 40
    assert all(abs(s - 1) < 1e-3 for s in res["sums"])


# ====================================================================== sigrl tag: options and files


@pytest.mark.parametrize("kind,extra,words", [
    ("unknown device", ["--device", "quantum"], "not a torch device"),
    ("CUDA absent", ["--device", "cuda:7"], "--device cuda:7"),
    ("output is a directory", ["--output", "{tmp}"], "is a directory"),
    ("output folder missing", ["--output", "{tmp}/no/such/out.csv"], "does not exist"),
    ("prompt file not UTF-8", ["--prompts", "{tmp}/latin.txt"], "not UTF-8"),
    ("prompt file without {}", ["--prompts", "{tmp}/noslot.txt"], "noslot.txt:2: a template needs exactly one"),
    ("negative batch size", ["--batch-size", "-3"], "batch size"),
    ("threshold above 1", ["--threshold", "1.5"], "--threshold"),
])
def test_tag_option_and_file_errors_exit_2(kind, extra, words, tiny_clip_files, image_dir, tmp_path, capsys):
    if kind == "CUDA absent":
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 CUDA devices")
    (tmp_path / "latin.txt").write_bytes("une photo d'un {} très beau\n".encode("latin-1"))
    (tmp_path / "noslot.txt").write_text("# templates\na photo\n")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    code, out, err = tag(tiny_clip_files, capsys, str(image_dir), "--labels", "a,b", *extra)
    assert code == 2 and out == ""
    one_line_error(err, words)


def test_model_config_without_weights_is_refused(tiny_clip_files, image_dir, capsys):
    """A JSON model config alone would tag with random weights: refused, not guessed."""
    code, out, err = run(["tag", str(image_dir), "--labels", "a,b", "--model", str(tiny_clip_files[0])], capsys)
    assert code == 2 and out == ""
    one_line_error(err, str(tiny_clip_files[0]), "--pretrained")


def test_no_traceback_without_debug_and_one_with_it(tmp_path):
    """Through a real process: exit codes and stderr as a shell user sees them."""
    (tmp_path / "text.jpg").write_text("hello")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    base = [sys.executable, "-m", "sigrl"]
    p = subprocess.run([*base, "data", "check", "voc", str(tmp_path / "nowhere")], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "nowhere: not a directory" in p.stderr
    p = subprocess.run([*base, "--debug", "tag", str(tmp_path), "--labels", "a", "--threshold", "7"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr and "UsageError: --threshold" in p.stderr
    p = subprocess.run([*base, "tag", str(tmp_path), "--labels", "a", "--top-k", "-1"], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == "sigrl tag: error: --top-k must be 0 (all labels) or more, got -1"


# ====================================================================== sigrl data check


def check(capsys, *args):
    return run(["data", "check", *args, "--no-progress"], capsys)


def test_data_check_csv_bom_crlf_unicode_labels(tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "labels.txt").write_bytes("\ufeffchien\r\n\r\nrouge vif\r\n城市\r\n".encode("utf-8"))
    (root / "unseen.txt").write_bytes("\ufeff城市\r\n".encode("utf-8"))
    for i in range(3):
        png(root / "imgs" / f"ü{i}.png")
    (root / "train.csv").write_bytes("\ufeffimage,labels\r\nimgs/ü0.png,chien|rouge vif\r\n\r\nimgs/ü1.png,-chien\r\n".encode())
    (root / "test.jsonl").write_bytes(
        '{"image": "imgs/ü2.png", "labels": ["城市", "-chien"]}\r\n\r\n'.encode())
    code, out, err = check(capsys, "csv", str(root), "--json")
    assert code == 0, out + err
    rep = json.loads(out)
    assert rep["seen_labels"] == 2 and rep["unseen_labels"] == 1
    assert rep["train_images"] == 2 and rep["test_images"] == 1 and rep["problems"] == []


def test_data_check_csv_every_bad_image_kind_is_a_named_problem(tmp_path, capsys):
    root = make_csv(tmp_path / "ds", n_train=9, n_test=2)
    img = root / "img"
    (img / "tr0.png").write_bytes(b"")                                              # zero bytes
    (img / "tr1.png").write_bytes((img / "tr1.png").read_bytes()[:40])              # truncated PNG
    (img / "tr2.png").write_text("<html>404</html>")                                # not an image
    png_claiming(img / "tr3.png", 20000, 20000)                                      # decompression bomb
    (img / "tr4.png").unlink()
    (img / "tr4.png").mkdir()                                                       # a directory
    (img / "tr5.png").unlink()
    os.symlink(img / "gone.png", img / "tr5.png")                                  # dangling link
    (img / "tr6.png").unlink()                                                      # missing
    code, out, err = check(capsys, "csv", str(root), "--json")
    assert code == 1 and err == ""
    rep = json.loads(out)
    assert rep["train_images"] == 2 and rep["test_images"] == 2
    probs = rep["problems"]
    for i, words in [(0, "not decodable"), (1, "not decodable"), (2, "not decodable"), (3, "not decodable"),
                     (4, "missing"), (5, "missing"), (6, "missing")]:
        assert sum(f"tr{i}.png" in p and words in p for p in probs) == 1, (i, probs)
    assert any("tr3.png" in p and "bomb" in p.lower() for p in probs)
    assert len(probs) == 7


def test_data_check_finds_a_truncated_jpeg_only_when_decoding(tmp_path, capsys):
    """The default header check (PIL verify) passes a truncated JPEG; --decode finds it."""
    root = make_csv(tmp_path / "ds", n_train=3, n_test=2)
    cut = root / "img" / "tr1.jpg"
    Image.open(root / "img" / "tr1.png").convert("RGB").resize((256, 256)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[:1500])
    train = root / "train.csv"
    train.write_text(train.read_text().replace("img/tr1.png", "img/tr1.jpg"))
    code, out, _ = check(capsys, "csv", str(root), "--json")
    assert code == 0 and json.loads(out)["problems"] == []  # the documented limit of the quick check
    code, out, err = check(capsys, "csv", str(root), "--json", "--decode")
    rep = json.loads(out)
    assert code == 1 and err == "" and rep["train_images"] == 2, out
    assert len(rep["problems"]) == 1 and "tr1.jpg" in rep["problems"][0] and "truncated" in rep["problems"][0]


def test_data_check_csv_hostile_and_malformed_rows(tmp_path, capsys):
    root = make_csv(tmp_path / "ds", n_train=3, n_test=2)
    (root / "train.csv").unlink()
    lines = [
        '{"image": "img/tr0.png", "labels": ["red"]}',
        '{"image": "../../etc/passwd", "labels": ["red"]}',      # 2: escapes the root
        '{"image": "/etc/shadow", "labels": ["red"]}',          # 3: absolute
        "[" * 50_000,                                             # 4: nested deeper than the parser
        '{"image": "img/tr1.png", "labels": ["red|green"]}',     # 5: separator inside a name
        '{"image": "img/tr1.png", "labels": "--red"}',           # 6: '-red' is not a name
        '{"image": "img/tr2.png", "labels": ["red"]}',
        '{"image": "img/tr2.png\\u0000.png", "labels": []}',    # 8: NUL in a path
    ]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = check(capsys, "csv", str(root), "--json")
    assert code == 1, out + err
    rep = json.loads(out)
    assert rep["train_images"] == 2
    src = root / "train.jsonl"
    for n, words in [(2, "escapes the dataset root"), (3, "absolute path"), (4, "nested too deeply"),
                     (5, "contains '|'"), (6, "starts with '-'"), (8, "NUL")]:
        assert any(p.startswith(f"{src}:{n}: ") and words in p for p in rep["problems"]), (n, rep["problems"])


def test_data_check_voc_hostile_xml(tmp_path, capsys):
    root = make_voc(tmp_path / "VOC2007")
    for i in ("000001", "000002", "000003"):
        jpg(root / "JPEGImages" / f"{i}.jpg")
    ents = '<!ENTITY a0 "lol">' + "".join(f'<!ENTITY a{i} "{("&a%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    (root / "Annotations" / "000001.xml").write_text(               # billion laughs
        f'<?xml version="1.0"?><!DOCTYPE x [{ents}]><annotation><object><name>&a9;</name></object></annotation>')
    secret = tmp_path / "secret.txt"
    secret.write_text("dog")
    (root / "Annotations" / "000003.xml").write_text(               # external entity (XXE)
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]>'
        "<annotation><object><name>&e;</name><difficult>0</difficult></object></annotation>")
    code, out, err = check(capsys, "voc", str(root), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["train_images"] == 1 and rep["test_images"] == 1, rep
    assert any("000001.xml: malformed XML" in p for p in rep["problems"])
    assert any("000003.xml: malformed XML" in p and "entity" in p for p in rep["problems"])
    # an annotation that is a directory, and an id list naming files outside the tree
    (root / "Annotations" / "000003.xml").unlink()
    (root / "Annotations" / "000003.xml").mkdir()
    code, out, err = check(capsys, "voc", str(root), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["train_images"] == 1
    assert any("000003.xml: is a directory" in p for p in rep["problems"])
    (root / "ImageSets" / "Main" / "test.txt").write_text("../../etc/passwd\n")
    code, _, err = check(capsys, "voc", str(root))
    assert code == 2
    one_line_error(err, "test.txt:1: malformed line")


def test_data_check_coco_hostile_json(tmp_path, capsys):
    root = make_coco(tmp_path / "coco", "val2014")
    make_coco(root, "train2014", images=[
        {"id": 10, "file_name": "ok.jpg"}, {"id": 11, "file_name": "../../../etc/passwd"},
        {"id": 12, "file_name": "/abs.jpg"}, {"id": 13}, "not an object"])
    for split in ("train2014", "val2014"):
        for n in ("ok.jpg", "COCO_val2014_000000000010.jpg", "COCO_val2014_000000000011.jpg",
                  "COCO_val2014_000000000012.jpg"):
            jpg(root / split / n)
    code, out, err = check(capsys, "coco", str(root), "--json")
    rep = json.loads(out)
    assert code == 2 and "instances_train2014.json" in err  # "not an object" breaks the index: unusable
    data = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    data["images"] = data["images"][:4]
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    code, out, err = check(capsys, "coco", str(root), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["train_images"] == 1, rep
    probs = "\n".join(rep["problems"])
    assert "escapes the dataset root" in probs and "absolute path" in probs and "lacks 'id' or 'file_name'" in probs
    (root / "annotations" / "instances_train2014.json").write_text("[" * 100_000)
    code, out, err = check(capsys, "coco", str(root))
    assert code == 2
    one_line_error(err, "instances_train2014.json", "nested too deeply")


def test_data_check_nuswide_h5_group_instead_of_labels(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    root = make_biam(tmp_path / "nus")
    for rel in ("actor/0001_11.jpg", "actor/0003_33.jpg", "airport_terminal/0002_22.jpg"):
        jpg(root / "Flickr" / rel)
    with h5py.File(root / "features" / "nus_wide_test.h5", "a") as f:
        del f["actor_0003_33.jpg-labels"]
        f.create_group("actor_0003_33.jpg-labels")
    code, out, err = check(capsys, "nuswide", str(root), "--json")
    rep = json.loads(out)
    assert code == 1 and rep["test_images"] == 1, rep
    assert any("actor_0003_33.jpg-labels' is not a dataset" in p for p in rep["problems"])


def test_data_check_nuswide_truncated_and_garbage_files(tmp_path, capsys):
    pytest.importorskip("h5py")
    root = make_biam(tmp_path / "nus")
    data = (root / "test_img_names.pkl").read_bytes()
    (root / "test_img_names.pkl").write_bytes(data[: len(data) // 2])       # half-downloaded pickle
    code, out, err = check(capsys, "nuswide", str(root))
    assert code == 2
    one_line_error(err, "test_img_names.pkl", "not a readable pickle")
    make_biam(root)
    (root / "features" / "nus_wide_train.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    code, out, err = check(capsys, "nuswide", str(root))
    assert code == 2
    one_line_error(err, "nus_wide_train.h5", "not a readable HDF5 file")


# ====================================================================== sigrl bench spml|partial


def run_dir(root: Path, name: str, content: bytes | None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if content is not None:
        (d / "eval.json").write_bytes(content)
    return d


GOOD_EVAL = json.dumps({"metrics": {"mAP": 0.5}, "config": {"data": {"proportion": 0.1},
                                                             "loss": {"name": "an"}}}).encode()


@pytest.mark.parametrize("protocol", ["spml", "partial"])
@pytest.mark.parametrize("kind,content,words", [
    ("no eval.json", None, "not a run directory"),
    ("metrics without mAP", b'{"metrics": {"loss": 0.3}}', "hold no mAP"),
    ("mAP as a string", b'{"metrics": {"mAP": "0.5"}}', "hold no mAP"),
])
def test_bench_runs_without_usable_metrics_exit_2(protocol, kind, content, words, tmp_path, capsys):
    bad = run_dir(tmp_path, "bad", content)
    code, out, err = run(["bench", protocol, str(bad), "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    one_line_error(err, str(bad), words)
    assert not (tmp_path / "out" / "results.md").exists()


@pytest.mark.parametrize("kind,content", [
    pytest.param("not JSON (half-written)", GOOD_EVAL[:20]),
    pytest.param("empty eval.json", b""),
    pytest.param("not UTF-8", b'{"metrics": {"mAP": 0.5, "note": "\xe9"}}'),
    pytest.param("a JSON list", b"[0.5]"),
    pytest.param("metrics is a list", b'{"metrics": [0.5]}'),
    pytest.param("nested 100k deep", b"[" * 100_000),
    pytest.param("proportion not a number", json.dumps({"metrics": {"mAP": 0.5}, "config": {
        "data": {"proportion": "ten"}}}).encode()),
    pytest.param("config is a list", b'{"metrics": {"mAP": 0.5}, "config": [1]}'),
])
def test_bench_corrupt_eval_json_is_one_line_not_a_traceback(kind, content, tmp_path, capsys):
    bad = run_dir(tmp_path, "bad", content)
    code, out, err = run(["bench", "partial", str(bad), "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    one_line_error(err, str(bad))


@pytest.mark.parametrize("value", [b"true", b"NaN"])
def test_bench_non_numeric_map_is_not_a_score(value, tmp_path, capsys):
    bad = run_dir(tmp_path, "bad", b'{"metrics": {"mAP": ' + value + b"}}")
    code, out, err = run(["bench", "spml", str(bad), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "mAP" in err


def test_bench_one_bad_run_does_not_lose_the_others(tmp_path, capsys):
    good = run_dir(tmp_path, "good", GOOD_EVAL)
    bad = run_dir(tmp_path, "bad", b'{"metrics": {}}')
    code, out, err = run(["bench", "spml", str(good), str(bad), "--output", str(tmp_path / "out")], capsys)
    assert code == 1 and "good" in (tmp_path / "out" / "results.md").read_text() and str(bad) in err
