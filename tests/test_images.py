"""Every kind of image file a user can have: valid odd ones load, bad ones say why."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sigrl.images import ImageError, find_images, load_image


def test_valid_odd_images_become_upright_rgb(tmp_path):
    Image.new("CMYK", (20, 10), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (20, 10), 128).save(tmp_path / "gray.png")
    arr16 = np.full((10, 20), 65535, dtype=np.uint16)
    Image.fromarray(arr16).save(tmp_path / "sixteen.png")
    pal = Image.new("P", (20, 10))
    pal.putpalette([255, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette.png", transparency=0)
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    for name in ["cmyk.jpg", "gray.png", "sixteen.png", "palette.png", "alpha.png"]:
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (20, 10), name
    # fully transparent red composited on white -> white; 16-bit max -> white
    assert load_image(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "sixteen.png").getpixel((0, 0)) == (255, 255, 255)
    # CMYK cyan stays cyan-ish (red channel low, blue high)
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((5, 5))
    assert r < 60 and b > 200


def test_exif_rotation_is_respected(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert sum(out.getpixel((10, 5))) > 600  # the white half is now on top


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "bomb", "dir"])
def test_bad_files_raise_with_reason(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "bomb":
        Image.new("1", (12000, 12000)).save(path)  # 144 Mpx, tiny file
    elif kind == "dir":
        path.mkdir()
    with pytest.raises(ImageError) as err:
        load_image(path)
    words = {"missing": "not found", "empty": "empty", "text": "not an image", "truncated": "truncated",
             "bomb": "bomb", "dir": "directory"}[kind]
    assert words in str(err.value)


def test_find_images_expands_folders_and_globs(tmp_path):
    for name in ["a.png", "b.JPG", "sub/c.png", "notes.txt"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    paths, problems = find_images([str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "nomatch*.png")])
    names = sorted(p.name for p in paths)
    assert names == ["a.png", "b.JPG", "c.png"]  # duplicates from the glob merged, .txt ignored
    assert problems == [(str(tmp_path / "nomatch*.png"), "pattern matched no files")]
