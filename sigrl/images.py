"""Reading image files the way users have them.

``load_image(path)`` returns an RGB PIL image or raises :class:`ImageError` with a short
reason. Valid input includes grayscale, CMYK, palette (with or without transparency),
alpha, 16-bit and EXIF-rotated files: all are converted to 8-bit RGB in their upright
orientation (transparent areas composited on white). Refused: missing, empty, truncated,
non-image files, and decompression bombs (more than ``MAX_PIXELS`` pixels, PIL's own
default of about 89 million).

Extreme aspect ratios (a 100,000×1 strip, a 4000×3 banner) are cut to their centred
``MAX_ASPECT``:1 window. Every backbone resizes the shorter side and centre-crops a
square, so the model only ever sees the central square; without the cut, resizing the
shorter side of a 1-pixel-high strip to 224 would allocate ``224² × aspect`` pixels
(gigabytes for a file of a few kilobytes). The window is exactly centred and keeps a
margin of 7.5 shorter sides on each side of that square, so the pixels the model sees are
the same up to resampling round-off (a couple of grey levels on a few pixels).

``find_images(inputs)`` expands files, folders (recursive) and glob patterns.
"""
from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
MAX_ASPECT = 16


class ImageError(Exception):
    """An image that cannot be used; ``str()`` is the reason (no path)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        img = Image.fromarray(((arr - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _cap_aspect(img: Image.Image) -> Image.Image:
    """The centred ``MAX_ASPECT``:1 window of a very long/thin image (see module docstring)."""
    w, h = img.size
    short = min(w, h)
    if short == 0 or max(w, h) <= MAX_ASPECT * short:
        return img
    long = max(w, h)
    keep = MAX_ASPECT * short + (long - MAX_ASPECT * short) % 2  # same parity: exactly centred
    if w > h:
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def load_image(path: str | Path) -> Image.Image:
    """Read ``path`` into an upright 8-bit RGB image, or raise ImageError(reason)."""
    path = Path(path)
    if not path.exists():
        raise ImageError("file not found")
    if path.is_dir():
        raise ImageError("is a directory")
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
    except OSError as err:
        raise ImageError(f"cannot read ({err.strerror})") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"decompression bomb refused ({w}x{h} = {w * h:,} pixels > {MAX_PIXELS:,})")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(_cap_aspect(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"decompression bomb refused ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError("not an image file (unrecognised format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        msg = str(err) or type(err).__name__
        if "truncated" in msg.lower():
            msg = "truncated image file"
        raise ImageError(f"cannot decode: {msg}") from err


def find_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursively; image suffixes only) and glob patterns.

    Returns ``(paths, problems)``: paths in a stable order without duplicates, and
    ``(input, reason)`` for inputs that matched nothing.
    """
    out: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path):
        try:  # the same file reached twice (symlink, ./x and x): one stat, cheaper than resolve();
            st = p.stat()  # hard links are distinct names the user listed: kept, keyed by their path
            key = (st.st_dev, st.st_ino) if st.st_nlink == 1 else os.path.realpath(p)
        except OSError:
            key = p
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((item, "folder holds no image files"))
            for q in found:
                add(q)
        elif p.exists() or p.is_symlink():
            add(p)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if os.path.isfile(m))
            if not matches:
                problems.append((item, "pattern matched no files"))
            for q in matches:
                add(q)
        else:
            add(p)  # reported as "file not found" when loaded, in input order
    return out, problems
