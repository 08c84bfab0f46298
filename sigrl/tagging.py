"""Zero-shot tagging: image files + any label names -> tags with per-label probabilities.

    from sigrl import Tagger
    tagger = Tagger(["beach", "dog", "sunset"], model="ViT-B-16", pretrained="/ckpt/vitb16.pt")
    for result in tagger.tag(["photos/"], top_k=3):
        print(result.image, result.tags)            # [("dog", 0.93), ("beach", 0.71), ...]

The path of one image, file to score:
    1. ``images.load_image``     file -> upright RGB (bad files become a skipped result),
                                 in DataLoader workers (``num_workers``)
    2. ``backbone.preprocess``   RGB -> (3, H, W)
    3. ``backbone.encode_images`` batch -> global g (B, D), local tokens L (B, P, D);
       with ``features=DIR`` read from / written to a :class:`~sigrl.feature_store.FeatureStore`
       (keyed by file content and backbone; such images are neither decoded nor encoded)
    4. label names -> prompts -> ``prompts.embed_labels`` -> T (C, D)  (once per label set)
    5. scores (B, C), ``scores=``:
         "independent" (default): ``p_c = sigmoid(a_c s_c + b_c)`` of label c's own score
            ``s_c`` (:meth:`sigrl.scorer.Scorer.per_label`: for plain matching the mean of
            the local and global cosines, each minus the image's mean cosine to the fixed
            :data:`NEUTRAL_ANCHORS`; a trained head's logit in its training label set
            plus c), so adding or removing other labels never changes p_c.
            ``(a_c, b_c)``: from ``calibration`` (``sigrl calibrate``; labels it never
            saw use its global map) or the scorer's default map
            (:func:`sigrl.calibration.default_map`).
         "softmax": the old normalised scores: each image's scores sum to 1 over the
            given labels (plain matching with ``match_scores(combine="softmax")``, or a
            head's logits through a softmax over the labels).
    6. a tag is kept when it is in the top ``top_k`` (0 / None: all) and at or above its
       threshold: the label's own (``thresholds=`` dict, else the calibration file's),
       else ``threshold``, else none.

Images are read and scored in batches (memory bounded by ``batch_size``), results are
yielded in input order as they are ready.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .backbones import load_backbone
from .calibration import Calibration, default_map
from .errors import CheckpointError, UsageError
from .images import ImageError, find_images, load_image
from .modules.matching import MODES
from .prompts import clean_labels, load_prompts
from .scorer import Scorer

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
#: model names load_backbone resolves to the world model shipped in the package (no --pretrained)
SHIPPED_MODELS = ("world", "world-v2")
SCORE_KINDS = ("independent", "softmax")
#: fixed neutral words: plain matching scores each label relative to the image's mean
#: cosine to these (through the same prompts), never relative to the other labels
NEUTRAL_ANCHORS = ("something", "an object", "a thing", "a picture", "a pattern", "a background", "nothing")


@dataclass
class TagResult:
    """Tags of one image (sorted by score, descending) or the reason it was skipped;
    ``scores`` names the score kind ("independent" probabilities or "softmax")."""

    image: str
    tags: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    scores: str = "independent"

    def to_dict(self) -> dict:
        """The record every output format carries: image, score kind, tags, error."""
        return {"image": self.image, "scores": self.scores,
                "tags": [{"label": l, "score": round(float(s), 6)} for l, s in self.tags], "error": self.error}


def block_results(items, good: list[int], S: torch.Tensor | None, labels: list[str], top_k: int | None,
                  cut: list[float], kind: str) -> Iterator[TagResult]:
    """TagResults of one block of images: ``items`` (path, error) in input order, ``good``
    the positions of the scored ones, ``S`` (len(good), C) their scores; a tag is kept in
    the top ``top_k`` (0 / None: all) at or above its label's threshold ``cut[c]``."""
    k = len(labels) if not top_k else max(0, min(top_k, len(labels)))
    rows = {}
    if good:  # one sort per block, not per image
        S = torch.as_tensor(S)
        finite = torch.isfinite(S).all(dim=1).tolist()
        values, index = S.sort(dim=1, descending=True, stable=True)
        rows = dict(zip(good, zip(finite, values[:, :k].tolist(), index[:, :k].tolist())))
    for n, (path, err) in enumerate(items):
        if n not in rows:
            yield TagResult(str(path), error=err, scores=kind)
            continue
        finite, vs, js = rows[n]
        if not finite:
            yield TagResult(str(path), error="the model gives NaN/inf scores for this image", scores=kind)
            continue
        yield TagResult(str(path), [(labels[j], v) for v, j in zip(vs, js) if v >= cut[j]], scores=kind)


def find_inputs(inputs, skip, kind: str) -> tuple[list[Path], list[TagResult]]:
    """The image files of ``inputs`` (files, folders, globs; one or a list) that ``skip``
    (a function of ``str(path)``, or None) does not skip, and an error record for each
    input that gives no image."""
    paths, problems = find_images([str(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)])
    unusable = [TagResult(item, error=reason, scores=kind) for item, reason in problems if not skip or not skip(item)]
    if skip:
        paths = [p for p in paths if not skip(str(p))]
    return paths, unusable


class _ImageFiles(Dataset):
    """(i, pixels or None, error or None): one image read, decoded and preprocessed."""

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
        scores: "independent" (default) or "softmax" (module docstring).
        calibration: a :class:`~sigrl.calibration.Calibration` or the path of a file
            written by ``sigrl calibrate`` (maps and per-label thresholds).
        features: a folder for the feature store (``sigrl tag --features``).
        backbone: an already loaded :class:`~sigrl.backbones.Backbone` (skips loading).
        num_workers: DataLoader workers decoding images.
    """

    def __init__(self, labels, *, model: str | None = None, pretrained: str | None = None,
                 checkpoint: str | Path | None = None, prompts=None, mode: str = "local+global",
                 top_k_patches: int = 16, batch_size: int = 16, device: str = "cpu",
                 backbone=None, preprocess: dict | None = None, num_workers: int = 0,
                 scores: str = "independent", calibration=None, features: str | Path | None = None):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if scores not in SCORE_KINDS:
            raise UsageError(f"scores must be one of {', '.join(SCORE_KINDS)}, got {scores!r}")
        if calibration is not None and scores != "independent":
            raise UsageError("a calibration maps independent scores: drop it or use scores='independent'")
        self.labels = clean_labels(labels)
        self.mode, self.top_k_patches, self.batch_size = mode, top_k_patches, batch_size
        self.num_workers, self.kind = num_workers, scores
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
                    if not Path(model).is_dir() and model not in SHIPPED_MODELS:  # open_clip name: default weights
                        pretrained = DEFAULT_PRETRAINED
                backbone = load_backbone(model, pretrained, device=device, preprocess=preprocess)
            # softmax rule for scores="softmax"; per_label (independent) ignores the combine
            self.scorer = Scorer.clip(backbone, load_prompts(prompts), mode=mode, top_k=top_k_patches,
                                      combine="softmax")
        self.scorer.eval()
        self.backbone, self.prompts, self.head = self.scorer.backbone, self.scorer.text.prompts, self.scorer.head
        self.run = self.scorer.run
        self.calibration = self._read_calibration(calibration)
        self.set_labels(self.labels)
        self.store = None
        if features is not None:
            from .feature_store import FeatureStore

            variant = (self.run.info.get("backbone_sha256") if self.run is not None else None)
            self.store = FeatureStore(features, self.backbone, variant=variant)
        self._check_finite(checkpoint or pretrained or model or "the backbone")

    # ----------------------------------------------------------------- identity, labels
    @property
    def identity(self) -> dict:
        """What a calibration is valid for: backbone, head, prompts, matching mode."""
        head = None
        if self.run is not None and self.head is not None:
            head = self.run.info.get("head_sha256") or str(self.run.run_dir)
        return {"backbone": self.backbone.fingerprint, "head": head, "prompts": self.prompts.key,
                "mode": self.mode if self.head is None else None,
                "anchors": list(NEUTRAL_ANCHORS) if self.head is None else None,
                "top_k_patches": self.top_k_patches if self.head is None else None}

    def _read_calibration(self, calibration) -> Calibration | None:
        if calibration is None:
            return None
        cal = calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
        mine, theirs = self.identity, cal.scorer
        bad = [k for k in ("backbone", "head", "prompts", "mode", "anchors", "top_k_patches") if k in theirs and theirs[k] != mine[k]]
        if bad:
            raise UsageError(f"the calibration was fitted for another scorer ({', '.join(f'{k} {theirs[k]!r}, here {mine[k]!r}' for k in bad)}); "
                             "run 'sigrl calibrate' with this model, prompts and mode")
        return cal

    def set_labels(self, labels) -> None:
        """Score against another label set (each label keeps its own score and map)."""
        self.labels = clean_labels(labels)
        with torch.no_grad():
            self.label_emb = self.scorer.text(self.labels)
            # the label side once per label set (prompt embeddings, the head's label graph)
            self.prepared = self._prepare_independent() if self.kind == "independent" else \
                self.scorer.prepare(self.labels)
        self._independent = self.prepared if self.kind == "independent" else None  # built on first raw_scores
        if self.calibration is not None:
            a, b = self.calibration.maps(self.labels)
        else:
            # a head's logit, or a learner scoring each label on its own as a logit (dualcoop: sigmoid = its probability)
            a0, b0 = default_map(self.backbone, self.head is not None or self.scorer.text.independent_scores)
            a, b = np.full(len(self.labels), a0), np.full(len(self.labels), b0)
        self._a = torch.tensor(a, dtype=torch.float64)
        self._b = torch.tensor(b, dtype=torch.float64)

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

    # ------------------------------------------------------------------------- scores
    @torch.no_grad()
    def raw_scores(self, global_feats: torch.Tensor, local_feats: torch.Tensor) -> torch.Tensor:
        """(B, D), (B, P, D) -> (B, C) each label's own score, before the map
        (:meth:`sigrl.scorer.Scorer.per_label`)."""
        if self._independent is None:
            self._independent = self._prepare_independent()
        return self._independent(global_feats, local_feats).float().cpu()

    def _prepare_independent(self):
        """:meth:`sigrl.scorer.Scorer.prepare` of each label's own score (plain matching
        relative to the neutral anchor words; a head's own logit)."""
        anchors = list(NEUTRAL_ANCHORS) if self.head is None else None
        return self.scorer.prepare(self.labels, independent=True, anchors=anchors)

    @torch.no_grad()
    def score_features(self, global_feats: torch.Tensor, local_feats: torch.Tensor) -> torch.Tensor:
        """global (B, D), local (B, P, D) -> scores (B, C): independent probabilities, or
        rows summing to 1 with ``scores="softmax"``."""
        if self.kind == "softmax":
            s = self.prepared(global_feats, local_feats)
            return (torch.softmax(s, dim=-1) if self.head is not None else s).float().cpu()
        s = self.raw_scores(global_feats, local_feats).double()
        return torch.sigmoid(s * self._a + self._b).float()

    def iter_features(self, paths: list[Path], progress: bool = False, desc: str = "tagging"
                      ) -> Iterator[tuple[list[tuple[Path, str | None]], torch.Tensor | None, torch.Tensor | None, list[int]]]:
        """Per block of images: ``(items, global (n, D), local (n, P, D), good)`` where
        ``items`` is ``[(path, error or None)]`` in input order and ``good`` indexes the
        items the features belong to (the store's fp16 values when there is a store).

        Without a store: DataLoader batches (decoding in ``num_workers`` workers). With
        one: each file's content key first (:meth:`FeatureStore.key_of`); only the files
        the store lacks go through the DataLoader and the encoder; stored ones are read in
        blocks of up to 256 without decoding."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="img", desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
                   smoothing=0.1)
        device = self.backbone.device
        store = self.store
        if store is None:
            loader = DataLoader(_ImageFiles(paths, self.backbone.preprocess), batch_size=self.batch_size,
                                num_workers=self.num_workers, collate_fn=_collate)
            for batch in loader:
                items = [(paths[i], err) for i, _, err in batch]
                good = [n for n, (_, x, _) in enumerate(batch) if x is not None]
                G = L = None
                if good:
                    G, L = self.backbone.encode_images(torch.stack([batch[n][1] for n in good]).to(device))
                    G, L = G.float(), L.float()
                yield items, G, L, good
                bar.update(len(batch))
            bar.close()
            return
        keys = [store.key_of(p) for p in paths]
        missing = [i for i, k in enumerate(keys) if k is None or k not in store]
        misses = iter(DataLoader(_ImageFiles([paths[i] for i in missing], self.backbone.preprocess),
                                 batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=_collate))
        decoded: dict[int, tuple] = {}  # input index -> (pixels or None, error or None)
        is_missing = set(missing)
        start = 0
        while start < len(paths):
            # a block: up to batch_size images to encode, or up to 256 stored ones
            stop, n_miss = start, 0
            while stop < len(paths) and stop - start < 256 and n_miss < self.batch_size:
                n_miss += stop in is_missing
                stop += 1
            block = range(start, stop)
            need = [i for i in block if i in is_missing]
            while need and need[-1] not in decoded:  # the misses come in input order
                for j, x, err in next(misses):
                    decoded[missing[j]] = (x, err)
            errors = {i: None for i in block}
            feats: dict[int, tuple] = {}
            stored = [i for i in block if i not in is_missing]
            if stored:
                got = store.get_many([keys[i] for i in stored])
                for i, f in zip(stored, got):
                    if f is None:  # its shard was torn since the keys were read: decode here
                        try:
                            decoded[i] = (self.backbone.preprocess(load_image(paths[i])), None)
                        except ImageError as e:
                            decoded[i] = (None, str(e))
                        need.append(i)
                    else:
                        feats[i] = f
            to_encode = []
            for i in sorted(need):
                x, err = decoded.pop(i)
                if x is None:
                    errors[i] = err
                else:
                    to_encode.append((i, x))
            if to_encode:
                g, l = self.backbone.encode_images(torch.stack([x for _, x in to_encode]).to(device))
                # score the stored (fp16) values: first runs and re-runs give the same scores
                g, l = g.half().cpu(), l.half().cpu()
                for n, (i, _) in enumerate(to_encode):
                    feats[i] = (g[n].numpy(), l[n].numpy())
                    if keys[i] is not None:
                        store.put(keys[i], feats[i][0], feats[i][1])
            items = [(paths[i], errors[i]) for i in block]
            good = [n for n, i in enumerate(block) if i in feats]
            G = L = None
            if good:
                G = torch.from_numpy(np.stack([feats[block[n]][0] for n in good])).float().to(device)
                L = torch.from_numpy(np.stack([feats[block[n]][1] for n in good])).float().to(device)
            yield items, G, L, good
            bar.update(len(block))
            start = stop
        bar.close()
        store.flush()

    def iter_scores(self, paths: list[Path], progress: bool = False, raw: bool = False
                    ) -> Iterator[tuple[Path, torch.Tensor | None, str | None]]:
        """Yield ``(path, scores (C,) or None, error or None)`` in input order
        (``raw=True``: :meth:`raw_scores`, before the map)."""
        for items, G, L, good in self.iter_features(paths, progress):
            scores = {}
            if good:
                s = self.raw_scores(G, L) if raw else self.score_features(G, L)
                scores = dict(zip(good, s))
            for n, (path, err) in enumerate(items):
                yield path, scores.get(n), err

    def label_thresholds(self, threshold: float | None = None, thresholds: dict | None = None) -> torch.Tensor:
        """(C,) threshold of each label: its own (``thresholds``, else the calibration's),
        else ``threshold``, else the calibration's global threshold when it has per-label
        ones, else none (-inf: every tag in the top-k is kept)."""
        own = dict(self.calibration.thresholds()) if self.calibration is not None else {}
        own.update(thresholds or {})
        fallback = threshold
        if fallback is None and self.calibration is not None and own:
            fallback = self.calibration.threshold
        return torch.tensor([own.get(l, fallback if fallback is not None else -math.inf) for l in self.labels],
                            dtype=torch.float32)

    def iter_tags(self, inputs, *, top_k: int | None = 5, threshold: float | None = None,
                  thresholds: dict | None = None, progress: bool = False, skip=None) -> Iterator[TagResult]:
        """Tag files/folders/globs; yields one :class:`TagResult` per image found
        (inputs matching nothing yield a result with an error). ``top_k`` 0 or None:
        every label; ``skip``: a function of an image name (``str(path)``), true for
        images not to tag again (a resumed run)."""
        paths, unusable = find_inputs(inputs, skip, self.kind)
        yield from unusable
        cut = self.label_thresholds(threshold, thresholds).tolist()
        for items, G, L, good in self.iter_features(paths, progress):
            S = self.score_features(G, L) if good else None
            yield from block_results(items, good, S, self.labels, top_k, cut, self.kind)

    def tag(self, inputs, **kwargs) -> list[TagResult]:
        """List form of :meth:`iter_tags`."""
        return list(self.iter_tags(inputs, **kwargs))
