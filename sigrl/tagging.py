"""Zero-shot tagging: image files + any label names -> ranked tags.

    from sigrl import Tagger
    tagger = Tagger(["beach", "dog", "sunset"], model="ViT-B-16", pretrained="/ckpt/vitb16.pt")
    for result in tagger.tag(["photos/"], top_k=3):
        print(result.image, result.tags)            # [("dog", 0.61), ("beach", 0.27), ...]

The path of one image, file to score:
    1. ``images.load_image``     file -> upright RGB (bad files become a skipped result)
    2. ``backbone.preprocess``   RGB -> (3, H, W)
    3. ``backbone.encode_images`` batch -> global g (B, D), local tokens L (B, P, D)
    4. label names -> prompts -> ``prompts.embed_labels`` -> T (C, D)  (once per label set)
    5. scores (B, C) from :class:`sigrl.scorer.Scorer`:
         no checkpoint: CLIP local+global matching with the softmax rule
            (``modules.matching.match_scores(combine="softmax")``): the mean of
            softmax_C(top-k patch similarity) and softmax_C(global similarity)
         ``checkpoint=RUN``: the trained head's logits, softmax over the labels
       Either way each image's scores sum to 1 over the given labels, so a threshold
       means the same thing with and without a trained head.

Images are read and scored in batches (memory bounded by ``batch_size``), results are
yielded as they are ready.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .backbones import load_backbone
from .errors import CheckpointError, UsageError
from .images import ImageError, find_images, load_image
from .modules.matching import MODES
from .prompts import clean_labels, load_prompts
from .scorer import Scorer

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"


@dataclass
class TagResult:
    """Tags of one image (sorted by score, descending) or the reason it was skipped."""

    image: str
    tags: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        d = {"image": self.image, "tags": [{"label": l, "score": round(float(s), 6)} for l, s in self.tags]}
        if self.error:
            d["error"] = self.error
        return d


class _ImageFiles(Dataset):
    def __init__(self, paths: list[Path], preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.preprocess(load_image(self.paths[i])), None
        except ImageError as err:
            return i, None, str(err)
        except Exception as err:  # a transform failing on an odd but decodable image
            return i, None, f"cannot preprocess: {type(err).__name__}: {err}"


def _collate(items):
    return items


class Tagger:
    """Scores images against label names with a frozen backbone (and optionally a
    trained head from ``sigrl train``).

    Args:
        labels: label names; stripped, empty names dropped, duplicates merged.
        model, pretrained: backbone (open_clip name or JSON config; tag or local file;
            or a Hugging Face CLIP directory as ``model``). Ignored with ``checkpoint``.
            An open_clip name without ``pretrained`` gets the "openai" weights; a JSON
            config needs ``pretrained`` (a config alone would mean random weights).
        checkpoint: a run directory written by ``sigrl train``.
        prompts: prompt set name, file or template (default "photo"; a run's own set with
            ``checkpoint``).
        mode: "local+global" (default), "global" or "local" (CLIP matching only).
        top_k_patches: patches averaged for the local score.
        backbone: an already loaded :class:`~sigrl.backbones.Backbone` (skips loading).
    """

    def __init__(self, labels, *, model: str | None = None, pretrained: str | None = None,
                 checkpoint: str | Path | None = None, prompts=None, mode: str = "local+global",
                 top_k_patches: int = 16, batch_size: int = 16, device: str = "cpu",
                 backbone=None, preprocess: dict | None = None, num_workers: int = 0):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.labels = clean_labels(labels)
        self.mode, self.top_k_patches, self.batch_size = mode, top_k_patches, batch_size
        self.num_workers = num_workers
        if checkpoint is not None:
            self.scorer = Scorer.from_run(checkpoint, device=device, backbone=backbone)
            if prompts:
                self.scorer.text.prompts = load_prompts(prompts)
        else:
            if backbone is None:
                model = model or DEFAULT_MODEL
                if pretrained is None:
                    if str(model).endswith(".json"):
                        raise UsageError(f"{model}: a model config holds no weights; give --pretrained FILE "
                                         "(tagging with random weights gives meaningless tags)")
                    if not Path(model).is_dir():  # an open_clip name: its default weights
                        pretrained = DEFAULT_PRETRAINED
                backbone = load_backbone(model, pretrained, device=device, preprocess=preprocess)
            # the per-image softmax rule, so that scores sum to 1 with and without a head
            self.scorer = Scorer.clip(backbone, load_prompts(prompts), mode=mode, top_k=top_k_patches,
                                      combine="softmax")
        self.scorer.eval()
        self.backbone, self.prompts, self.head = self.scorer.backbone, self.scorer.text.prompts, self.scorer.head
        with torch.no_grad():
            self.label_emb = self.scorer.text(self.labels)
        self._check_finite(checkpoint or pretrained or model or "the backbone")

    @torch.no_grad()
    def _check_finite(self, source) -> None:
        """Weights holding NaN/inf (a corrupt or tampered checkpoint) would give NaN
        scores for every image: refuse them once, up front."""
        from PIL import Image

        if not torch.isfinite(self.label_emb).all():
            raise CheckpointError(f"{source}: the text encoder gives NaN/inf label embeddings; "
                                  "the weights are corrupt (re-download or retrain them)")
        size = self.backbone.preprocess_config.image_size
        probe = self.backbone.preprocess(Image.new("RGB", (size, size), (128, 128, 128)))
        g, l = self.backbone.encode_images(probe.unsqueeze(0).to(self.backbone.device))
        if not (torch.isfinite(g).all() and torch.isfinite(l).all()
                and torch.isfinite(self.score_features(g, l)).all()):
            raise CheckpointError(f"{source}: the model gives NaN/inf for a plain grey image; "
                                  "the weights are corrupt (re-download or retrain them)")

    @torch.no_grad()
    def score_features(self, global_feats: torch.Tensor, local_feats: torch.Tensor) -> torch.Tensor:
        """global (B, D), local (B, P, D) -> scores (B, C), each row summing to 1."""
        scores = self.scorer(global_feats, local_feats, self.labels)
        return torch.softmax(scores, dim=-1) if self.head is not None else scores

    def iter_scores(self, paths: list[Path], progress: bool = False) -> Iterator[tuple[Path, torch.Tensor | None, str | None]]:
        """Yield ``(path, scores (C,) or None, error or None)`` in input order."""
        from tqdm.auto import tqdm

        loader = DataLoader(_ImageFiles(paths, self.backbone.preprocess), batch_size=self.batch_size,
                            num_workers=self.num_workers, collate_fn=_collate)
        bar = tqdm(total=len(paths), unit="img", desc="tagging", disable=not progress, leave=False)
        for batch in loader:
            good = [(i, x) for i, x, err in batch if x is not None]
            scores = {}
            if good:
                pixels = torch.stack([x for _, x in good]).to(self.backbone.device)
                g, l = self.backbone.encode_images(pixels)
                for (i, _), s in zip(good, self.score_features(g, l).cpu()):
                    scores[i] = s
            for i, x, err in batch:
                yield paths[i], scores.get(i), err
            bar.update(len(batch))
        bar.close()

    def iter_tags(self, inputs, *, top_k: int | None = 5, threshold: float | None = None,
                  progress: bool = False) -> Iterator[TagResult]:
        """Tag files/folders/globs; yields one :class:`TagResult` per image found
        (inputs matching nothing yield a result with an error)."""
        paths, problems = find_images([str(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)])
        for item, reason in problems:
            yield TagResult(item, error=reason)
        k = len(self.labels) if top_k is None else max(0, min(top_k, len(self.labels)))
        for path, scores, err in self.iter_scores(paths, progress):
            if scores is None:
                yield TagResult(str(path), error=err)
                continue
            if not torch.isfinite(scores).all():
                yield TagResult(str(path), error="the model gives NaN/inf scores for this image")
                continue
            values, index = scores.sort(descending=True)
            tags = [(self.labels[j], float(v)) for v, j in zip(values[:k].tolist(), index[:k].tolist())
                    if threshold is None or v >= threshold]
            yield TagResult(str(path), tags)

    def tag(self, inputs, **kwargs) -> list[TagResult]:
        """List form of :meth:`iter_tags`."""
        return list(self.iter_tags(inputs, **kwargs))
