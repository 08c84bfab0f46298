"""Shared test fixtures: a tiny open_clip model saved to disk, real image files.

Everything is built by the tests (no weights or datasets can be downloaded here).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_NUS = REPO.parent / "shared" / "data" / "nus-wide"

TINY_CLIP_CFG = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=64, layers=2, width=64, head_width=32, patch_size=16),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)

torch.set_num_threads(1)


def save_tiny_clip(directory: Path, seed: int = 0, cfg: dict | None = None) -> tuple[Path, Path]:
    """Build a randomly initialised tiny open_clip CLIP, save JSON config + safetensors."""
    import open_clip
    from safetensors.torch import save_file

    cfg = cfg or TINY_CLIP_CFG
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    directory.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = directory / "tiny.json", directory / "tiny.safetensors"
    config_path.write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    return config_path, weights_path


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory) -> tuple[Path, Path]:
    """(config.json, weights.safetensors) of a tiny random open_clip model."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_backbone(tiny_clip_files):
    from sigrl.backbones import load_backbone

    return load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]))


def write_shape_image(path: Path, colour=(220, 30, 30), shape="square", size=64, seed=0) -> Path:
    """A real PNG/JPEG file with one coloured shape on a noisy background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bg = (rng.random((size, size, 3)) * 60 + 100).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    else:
        d.rectangle(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """A folder with a few valid images (one in a sub-folder)."""
    d = tmp_path / "imgs"
    write_shape_image(d / "red_square.png", (220, 30, 30), "square", seed=1)
    write_shape_image(d / "blue_circle.jpg", (30, 30, 220), "circle", seed=2)
    write_shape_image(d / "sub" / "green_square.png", (30, 200, 30), "square", seed=3)
    return d
