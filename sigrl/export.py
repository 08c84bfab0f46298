"""Export the towers for ONNX Runtime (``sigrl export onnx``; extra ``onnx``).

Writes, into one folder::

    image.onnx    pixels (B, 3, H, W) float32 -> global (B, D) L2-normalised,
                  local (B, P, D) raw projected patch tokens (as ``Backbone.encode_images``)
    text.onnx     tokens (N, L) int64, L = the context length (77; pad with 0) -> (N, D)
                  L2-normalised (as ``Backbone.encode_tokens``; no learnt prompt context)
    export.json   the backbone spec and fingerprint, preprocessing (image size, mean,
                  std, resize), shapes, opset

With a fixed label list (``export_onnx(..., tagger=Tagger(labels, ...))``, ``sigrl export
onnx DIR --labels ...``; a trained head with ``--checkpoint RUN``) also::

    scores.onnx   global (B, D), local (B, P, D) -> scores (B, C): what
                  ``Tagger.score_features`` gives for those labels (independent
                  probabilities sigmoid(a_c s_c + b_c) with the calibration's maps, or the
                  softmax scores), the trained head and the prompt context included
    export.json   + the labels, the score kind, each label's threshold, the scorer identity

The label side (prompt embeddings, the head's label graph and GMC) depends on the labels
alone: it is computed once in torch (:meth:`sigrl.scorer.Scorer.prepare`) and stored in
the graph as constants, so ``scores.onnx`` holds only the image side (SVFR, matching,
the score map). :class:`OnnxTagger` tags image files end to end with ONNX Runtime
(decoding and preprocessing as the Tagger does, no torch model).

Preprocessing (resize, crop, normalise) and tokenisation stay outside the graphs:
they are what ``backbone.preprocess`` and ``backbone.tokenize`` do.
"""
from __future__ import annotations

import contextlib
import json
import warnings
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


class ScoreGraph(nn.Module):
    """A Tagger's scores of its fixed labels as a module of the image features only:
    global (B, D), local (B, P, D) -> (B, C) float32, equal to ``tagger.score_features``."""

    def __init__(self, tagger):
        super().__init__()
        self.prepared = tagger.prepared  # the label side, computed once (Scorer.prepare)
        self.kind = tagger.kind
        self.softmax = tagger.kind == "softmax" and tagger.head is not None
        self.register_buffer("a", tagger._a.float().clone())
        self.register_buffer("b", tagger._b.float().clone())

    def forward(self, global_feats, local_feats):
        s = self.prepared(global_feats, local_feats)
        if self.kind == "softmax":
            return torch.softmax(s, dim=-1) if self.softmax else s
        return torch.sigmoid(s * self.a + self.b)


def export_onnx(backbone, out_dir: str | Path, *, opset: int = OPSET, tagger=None, threshold: float | None = None,
                thresholds: dict | None = None) -> dict:
    """Write image.onnx, text.onnx and export.json for an open_clip ViT backbone; with a
    ``tagger`` also scores.onnx for its labels (its backbone then is the tagger's: a run's
    fine-tuned ViT blocks included). ``threshold`` / ``thresholds``: as ``Tagger.iter_tags``,
    recorded per label in export.json for :class:`OnnxTagger`."""
    _need_onnx()
    if tagger is not None:
        backbone = tagger.backbone
    if backbone.spec.get("kind") != "open_clip":
        raise UsageError("ONNX export supports open_clip backbones for now")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = backbone.preprocess_config.image_size
    pixels = torch.randn(2, 3, size, size)
    tokens = backbone.tokenize(["a photo of a dog", "a photo of a cat"]).long()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    with torch.no_grad():
        g, l = backbone.encode_images(pixels)
    try:
        _export(backbone, out, pixels, tokens, opset)
        if tagger is not None:
            _export_scores(ScoreGraph(tagger).eval(), out, g.float(), l.float(), opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    info = {"format": "sigrl-onnx", "opset": opset, "fingerprint": backbone.fingerprint,
            "spec": {k: str(v) for k, v in backbone.spec.items()},
            "preprocess": backbone.preprocess_config.to_dict(), "embed_dim": int(g.shape[1]),
            "patches": int(l.shape[1]), "context_length": int(tokens.shape[1]),
            "image": "image.onnx", "text": "text.onnx"}
    if tagger is not None:
        import math

        cut = tagger.label_thresholds(threshold, thresholds).tolist()
        info.update({"scores": "scores.onnx", "score_kind": tagger.kind, "labels": list(tagger.labels),
                     "thresholds": [None if math.isinf(c) else c for c in cut],
                     "scorer": tagger.identity, "checkpoint": str(tagger.run.run_dir) if tagger.run else None})
    atomic_write_text(out / "export.json", json.dumps(info, indent=1) + "\n")
    return info


def _export(backbone, out: Path, pixels, tokens, opset: int) -> None:
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(ImageTower(backbone).eval(), (pixels,), str(out / "image.onnx"), input_names=["pixels"],
                          output_names=["global", "local"], opset_version=opset, dynamo=False,
                          dynamic_axes={"pixels": {0: "batch"}, "global": {0: "batch"}, "local": {0: "batch"}})
        torch.onnx.export(TextTower(backbone).eval(), (tokens,), str(out / "text.onnx"), input_names=["tokens"],
                          output_names=["text"], opset_version=opset, dynamo=False,
                          dynamic_axes={"tokens": {0: "n"}, "text": {0: "n"}})


@contextlib.contextmanager
def _quiet_tracer():
    """Silence the tracer's warnings about Python values read from shapes: the graphs are
    exported for the model's fixed patch count and the fixed labels (batch stays dynamic)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        yield


def _export_scores(graph: nn.Module, out: Path, g, l, opset: int) -> None:
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(graph, (g, l), str(out / "scores.onnx"), input_names=["global", "local"],
                          output_names=["scores"], opset_version=opset, dynamo=False,
                          dynamic_axes={"global": {0: "batch"}, "local": {0: "batch"}, "scores": {0: "batch"}})


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
        self.scores = (ort.InferenceSession(str(out / self.info["scores"]), opts, providers=["CPUExecutionProvider"])
                       if self.info.get("scores") else None)

    def encode_images(self, pixels):
        g, l = self.image.run(None, {"pixels": pixels.astype("float32")})
        return g, l

    def encode_tokens(self, tokens):
        return self.text.run(None, {"tokens": tokens.astype("int64")})[0]

    def score_features(self, global_feats, local_feats):
        """(B, D), (B, P, D) numpy -> (B, C) scores of the exported labels (scores.onnx)."""
        if self.scores is None:
            raise UsageError("this export has no scores.onnx: export with --labels (and --checkpoint for a head)")
        return self.scores.run(None, {"global": global_feats.astype("float32"),
                                      "local": local_feats.astype("float32")})[0]


class OnnxTagger:
    """Tag image files end to end with an export that has scores.onnx: read, decode and
    preprocess as :class:`~sigrl.tagging.Tagger` does (DataLoader workers), then
    image.onnx and scores.onnx in ONNX Runtime. ``iter_tags`` yields the same
    :class:`~sigrl.tagging.TagResult` records as ``Tagger.iter_tags`` (the export's
    labels and per-label thresholds; ``threshold`` fills labels without one)."""

    def __init__(self, export_dir: str | Path, *, batch_size: int = 16, num_workers: int = 0,
                 threads: int | None = None):
        from .backbones.base import PreprocessConfig
        from .backbones.openclip import build_transform

        self.towers = OnnxTowers(export_dir, threads=threads)
        info = self.towers.info
        if "scores" not in info:
            raise UsageError(f"{export_dir}: this export has no scores.onnx; export with --labels")
        pre = dict(info["preprocess"])
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        self.preprocess = build_transform(PreprocessConfig(**pre))
        self.labels, self.kind = list(info["labels"]), info["score_kind"]
        self.batch_size, self.num_workers = batch_size, num_workers

    def iter_tags(self, inputs, *, top_k: int | None = 5, threshold: float | None = None,
                  thresholds: dict | None = None, progress: bool = False, skip=None):
        """As :meth:`sigrl.tagging.Tagger.iter_tags`: ``thresholds`` (label -> threshold)
        override the export's, ``threshold`` fills labels without one, ``skip(name)`` true
        for images not to tag again."""
        import math

        import numpy as np
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from .tagging import _collate, _ImageFiles, block_results, find_inputs

        paths, unusable = find_inputs(inputs, skip, self.kind)
        yield from unusable
        fill = -math.inf if threshold is None else threshold
        own = dict(zip(self.labels, self.towers.info["thresholds"]))
        own.update(thresholds or {})
        cut = [fill if own[l] is None else own[l] for l in self.labels]
        loader = DataLoader(_ImageFiles(paths, self.preprocess), batch_size=self.batch_size,
                            num_workers=self.num_workers, collate_fn=_collate)
        with tqdm(total=len(paths), unit="img", desc="tagging (onnx)", disable=not progress, leave=False) as bar:
            for batch in loader:
                items = [(paths[i], err) for i, _, err in batch]
                good = [n for n, (_, x, _) in enumerate(batch) if x is not None]
                S = None
                if good:
                    pixels = np.stack([batch[n][1].numpy() for n in good])
                    S = torch.from_numpy(self.towers.score_features(*self.towers.encode_images(pixels)))
                yield from block_results(items, good, S, self.labels, top_k, cut, self.kind)
                bar.update(len(batch))

    def tag(self, inputs, **kwargs) -> list:
        return list(self.iter_tags(inputs, **kwargs))
