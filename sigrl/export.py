"""Export the towers for ONNX Runtime (``sigrl export onnx``; extra ``onnx``).

Writes, into one folder::

    image.onnx    pixels (B, 3, H, W) float32 -> global (B, D) L2-normalised,
                  local (B, P, D) raw projected patch tokens (as ``Backbone.encode_images``)
    text.onnx     tokens (N, L) int64, L = the context length (77; pad with 0) -> (N, D)
                  L2-normalised (as ``Backbone.encode_tokens``; no learnt prompt context)
    export.json   the backbone spec and fingerprint, preprocessing (image size, mean,
                  std, resize), shapes, opset

Preprocessing (resize, crop, normalise) and tokenisation stay outside the graphs:
they are what ``backbone.preprocess`` and ``backbone.tokenize`` do. Scoring then is
:meth:`sigrl.scorer.Scorer.per_label` on the outputs (a few matrix products). A trained
head is not exported yet (its label graph is built at every call).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .safeio import atomic_write_text

OPSET = 17


class ImageTower(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.visual = backbone.model.visual

    def forward(self, pixels):
        pooled, tokens = self.visual(pixels)
        local = tokens @ self.visual.proj
        return nn.functional.normalize(pooled.float(), dim=-1), local.float()


class TextTower(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.model = backbone.model

    def forward(self, tokens):
        return self.backbone.encode_tokens(tokens)


def _need_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the onnx extra: pip install 'sigrl[onnx]' (onnx, onnxruntime)") from None


def export_onnx(backbone, out_dir: str | Path, *, opset: int = OPSET) -> dict:
    """Write image.onnx, text.onnx and export.json for an open_clip ViT backbone."""
    _need_onnx()
    if backbone.spec.get("kind") != "open_clip":
        raise UsageError("ONNX export supports open_clip backbones for now")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = backbone.preprocess_config.image_size
    pixels = torch.randn(2, 3, size, size)
    tokens = backbone.tokenize(["a photo of a dog", "a photo of a cat"]).long()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        _export(backbone, out, pixels, tokens, opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    with torch.no_grad():
        g, l = backbone.encode_images(pixels)
    info = {"format": "sigrl-onnx", "opset": opset, "fingerprint": backbone.fingerprint,
            "spec": {k: str(v) for k, v in backbone.spec.items()},
            "preprocess": backbone.preprocess_config.to_dict(), "embed_dim": int(g.shape[1]),
            "patches": int(l.shape[1]), "context_length": int(tokens.shape[1]),
            "image": "image.onnx", "text": "text.onnx"}
    atomic_write_text(out / "export.json", json.dumps(info, indent=1) + "\n")
    return info


def _export(backbone, out: Path, pixels, tokens, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(ImageTower(backbone).eval(), (pixels,), str(out / "image.onnx"), input_names=["pixels"],
                          output_names=["global", "local"], opset_version=opset, dynamo=False,
                          dynamic_axes={"pixels": {0: "batch"}, "global": {0: "batch"}, "local": {0: "batch"}})
        torch.onnx.export(TextTower(backbone).eval(), (tokens,), str(out / "text.onnx"), input_names=["tokens"],
                          output_names=["text"], opset_version=opset, dynamo=False,
                          dynamic_axes={"tokens": {0: "n"}, "text": {0: "n"}})


class OnnxTowers:
    """ONNX Runtime sessions of an export: ``encode_images(pixels)`` and
    ``encode_tokens(tokens)`` with numpy in and out."""

    def __init__(self, out_dir: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("needs onnxruntime: pip install 'sigrl[onnx]'") from None
        out = Path(out_dir)
        self.info = json.loads((out / "export.json").read_text(encoding="utf-8"))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.image = ort.InferenceSession(str(out / self.info["image"]), opts, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(out / self.info["text"]), opts, providers=["CPUExecutionProvider"])

    def encode_images(self, pixels):
        g, l = self.image.run(None, {"pixels": pixels.astype("float32")})
        return g, l

    def encode_tokens(self, tokens):
        return self.text.run(None, {"tokens": tokens.astype("int64")})[0]
