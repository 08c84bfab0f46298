"""`sigrl export onnx`: ONNX Runtime gives the torch towers' outputs (<= 1e-4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_onnx_towers_match_torch(tiny_clip_files, tiny_backbone, tmp_path, capsys):
    from sigrl.cli import main
    from sigrl.export import OnnxTowers

    cfg, w = map(str, tiny_clip_files)
    assert main(["export", "onnx", str(tmp_path / "out"), "--model", cfg, "--pretrained", w]) == 0
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["fingerprint"] == tiny_backbone.fingerprint
    towers = OnnxTowers(tmp_path / "out")
    torch.manual_seed(0)
    for batch in (1, 3):  # dynamic batch axis
        pixels = torch.randn(batch, 3, 64, 64)
        g, l = tiny_backbone.encode_images(pixels)
        g2, l2 = towers.encode_images(pixels.numpy())
        assert np.abs(g.numpy() - g2).max() <= 1e-4 and np.abs(l.numpy() - l2).max() <= 1e-4
    tokens = tiny_backbone.tokenize(["a photo of a red car", "dog", "rouge vif ✓"]).long()
    t = tiny_backbone.encode_tokens(tokens).numpy()
    assert np.abs(t - towers.encode_tokens(tokens.numpy())).max() <= 1e-4
