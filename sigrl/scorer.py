"""The one scorer: backbone features + label names -> scores (B, C).

    scorer = Scorer.clip(backbone, prompts)           plain CLIP local+global matching
    scorer = Scorer.from_run("runs/x")                a trained run: its backbone, prompts, context, head
    scores = scorer(global_feats, local_feats, labels)
    zsl, gzsl = score_part(scorer, part, [unseen, all_labels])

``Tagger``, ``sigrl eval``, ``sigrl bench``, the trainer's evaluation and label
recovery, and the demo all score through this module. Scores of a trained head are its
logits; plain matching gives :func:`sigrl.modules.matching.match_scores`. Each call
scores against exactly the label set it is given: the label graph, the normalisation
over labels and the embeddings are those of that set, so scoring the unseen labels alone
(ZSL) is another pass than scoring all labels (GZSL), never a slice of it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import nn

from .backbones import backbone_from_spec
from .checkpoint import LoadedRun, load_run
from .experiment import Part, features, part_dataset
from .finetune import apply_tail_state
from .model import LabelText
from .modules.prompt_learner import PromptLearner, learner_from_saved
from .modules.matching import match_scores

__all__ = ["Scorer", "PreparedScores", "score_part"]


class Scorer(nn.Module):
    """Label text (backbone, prompts, optional learnt context) + an optional trained head.

    Args:
        text: the prompt learner that embeds label names (:mod:`sigrl.modules.prompt_learner`:
            hand-written prompts, or a run's learnt coop / csc / dualcoop context).
        head: a trained head, or None: the learner scores on its own (CLIP matching with
            its T; DualCoOp's region scoring for a dualcoop run).
        name: a name for tables and plots.
        match_options: keyword arguments of ``match_scores`` (plain matching only:
            ``mode``, ``top_k``, ...).
    """

    def __init__(self, text: PromptLearner, head: nn.Module | None = None, *, name: str = "clip",
                 run: LoadedRun | None = None, **match_options):
        super().__init__()
        self.text, self.head, self.name, self.run = text, head, name, run
        self.match_options = match_options

    @classmethod
    def clip(cls, backbone, prompts, *, name: str = "clip", **match_options) -> "Scorer":
        """Plain CLIP matching with ``prompts`` (a PromptSet)."""
        return cls(LabelText(backbone, prompts), None, name=name, **match_options)

    @classmethod
    def from_run(cls, run_dir: str | Path, *, device="cpu", backbone=None, name: str | None = None) -> "Scorer":
        """A run written by ``sigrl train`` (the one way to load a run for scoring): its
        head, prompt set and context; ``backbone`` when given, else the run's own."""
        run = load_run(run_dir, device=device, backbone=backbone)
        bb = backbone or backbone_from_spec(run.backbone_spec, device=device, preprocess=run.preprocess)
        return cls.from_loaded(run, bb, name=name)

    @classmethod
    def from_loaded(cls, run: LoadedRun, backbone, *, name: str | None = None) -> "Scorer":
        """A run already read by :func:`~sigrl.checkpoint.load_run`, on ``backbone``."""
        run.check_backbone(backbone)
        if run.backbone_tensors:  # the paper's regime: the run's fine-tuned ViT blocks, on a copy
            backbone = apply_tail_state(backbone, run.backbone_tensors)
        text = learner_from_saved(backbone, run.prompts, run.learner, run.prompt_tensors)
        text.requires_grad_(False)
        head = run.head.to(backbone.device) if run.head is not None else None
        return cls(text, head, name=name or run.run_dir.name, run=run)

    @property
    def backbone(self):
        return self.text.backbone

    def forward(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None, labels: list[str]) -> torch.Tensor:
        """(B, D), (B, P, D), C label names -> (B, C) float32 scores."""
        return self.prepare(labels)(global_feats, local_feats)

    def per_label(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None, labels: list[str],
                  context: list[str] | None = None, anchors: list[str] | None = None) -> torch.Tensor:
        """(B, C) scores where label c's column depends on c alone, never on the other
        labels of ``labels`` (what independent tagging probabilities are built on); the
        rule is :meth:`prepare` with ``independent=True``."""
        return self.prepare(labels, independent=True, context=context, anchors=anchors)(global_feats, local_feats)

    def prepare(self, labels: list[str], *, independent: bool = False, context: list[str] | None = None,
                anchors: list[str] | None = None) -> "PreparedScores":
        """The label side of scoring ``labels``, computed once: a module ``(g, L) -> (B, C)``
        that holds every label-only tensor (prompt embeddings, the head's graph-refined
        labels) so a batch costs only the image side. ``Tagger`` keeps one per label set;
        ``sigrl export onnx --labels`` traces one.

        ``independent=False``: the scores of :meth:`forward` (one pass over ``labels``: the
        head's logits, or the learner's matching).

        ``independent=True``: label c's column depends on c alone. Plain matching: the
        un-normalised mean of the cosines, ``(s_l + s_g) / 2`` with ``s_g = <g/|g|, T_c>``
        and ``s_l`` = mean of the top-k ``<L_p/|L_p|, T_c>`` (``mode`` keeps one part); with
        ``anchors`` (a fixed list of neutral words, never the labels) each part minus the
        image's mean cosine to the anchors, which takes out how much an image resembles any
        text (what a softmax over the labels removes) without looking at the other labels.
        A learner scoring each label on its own (dualcoop): its scores. A trained head: its
        every logit depends on the label set of the call (its label graph, SVFR's sum over
        labels, the normalisation over labels), so label c is scored in the fixed set
        ``context + [c]`` (``context``: default the run's training labels): its own logit in
        the set it was trained with, one head pass per label outside ``context``."""
        labels = list(labels)
        if self.head is None and (not independent or self.text.independent_scores):
            return PreparedScores(self, "learner", [(self.text.label_tensors(labels), None, None)],
                                  list(range(len(labels))), len(labels))
        if self.head is None:
            k = self.match_options.get("top_k", 16)
            mode = self.match_options.get("mode", "local+global")
            T = Fn.normalize(self.text(labels).float(), dim=-1)
            A = Fn.normalize(self.text(list(anchors)).float(), dim=-1) if anchors else None
            return PreparedScores(self, "cosine", [({"T": T, "A": A}, None, None)], list(range(len(labels))),
                                  len(labels), mode=mode, top_k=k)
        if not independent:
            sets = [labels]
            columns = [(0, j) for j in range(len(labels))]
        else:
            if context is None:
                context = list(self.run.labels) if self.run is not None else []
            context = list(dict.fromkeys(context))
            where = {name: i for i, name in enumerate(context)}
            sets, columns = ([context] if any(n in where for n in labels) else []), []
            for name in labels:
                if name in where:
                    columns.append((0, where[name]))
                else:
                    sets.append(context + [name])
                    columns.append((len(sets) - 1, len(context)))
        passes = []
        for names in sets:
            lt = self.text.label_tensors(names)
            passes.append((lt, self.head.prepare_labels(lt["T"], names), names))
        return PreparedScores(self, "head", passes, columns, len(labels))


class PreparedScores(nn.Module):
    """Scores of one fixed label set: ``forward(global (B, D), local (B, P, D)) -> (B, C)``
    float32, made by :meth:`Scorer.prepare` (which says the rules). It holds the scorer's
    modules and the label-side tensors of each pass; every operation of its forward is on
    the image features, so it traces to an ONNX graph with the labels as constants."""

    def __init__(self, scorer: Scorer, kind: str, passes: list, columns: list, n_labels: int, **options):
        super().__init__()
        self.text, self.head = scorer.text, scorer.head
        self.kind, self.passes, self.columns, self.n_labels = kind, passes, columns, n_labels
        self.match_options = dict(scorer.match_options)
        self.options = options

    def forward(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "learner":
            return self.text.score_prepared(global_feats, local_feats, self.passes[0][0], **self.match_options).float()
        if self.kind == "cosine":
            return self._cosine(global_feats, local_feats, **self.passes[0][0])
        outs = []
        for lt, prepared, _names in self.passes:
            logits = self.head.score_prepared(global_feats, local_feats, prepared)
            outs.append(self.text.combine_prepared(logits, global_feats, local_feats, lt).float())
        if len(outs) == 1 and [c for _, c in self.columns] == list(range(outs[0].shape[1])):
            return outs[0]
        return torch.stack([outs[p][:, c] for p, c in self.columns], dim=1) if self.columns else \
            global_feats.new_zeros(global_feats.shape[0], 0).float()

    def _cosine(self, global_feats, local_feats, T, A):
        from .modules.matching import global_scores, local_scores

        mode, k = self.options["mode"], self.options["top_k"]

        def cosines(E):
            E = E.to(global_feats.device)
            parts = []
            if mode != "local":
                parts.append(global_scores(Fn.normalize(global_feats.float(), dim=-1), E))
            if mode != "global":
                L = Fn.normalize(local_feats.float(), dim=-1)
                # top-k of all P patches is their mean: one (B, D) x (D, C) product
                parts.append(L.mean(dim=1) @ E.t() if k >= L.shape[1] else local_scores(L, E, k))
            return parts

        parts = cosines(T)
        if A is not None:
            parts = [s - a.mean(dim=1, keepdim=True) for s, a in zip(parts, cosines(A))]
        return (sum(parts) / len(parts)).float()


def _dist(accelerator) -> tuple[int, int]:
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


@torch.no_grad()
def score_part(scorer: Scorer, part: Part, label_sets: list[list[str]], accelerator=None,
               batch_size: int = 128, progress: bool = False) -> list[torch.Tensor]:
    """Scores of every row of ``part`` for each label set -> list of (len(part), C_s)
    float32 CPU tensors, on every process (each process scores a contiguous chunk of
    the rows; the chunks are gathered)."""
    from tqdm.auto import tqdm

    backbone = scorer.backbone
    rank, world = _dist(accelerator)
    device = accelerator.device if accelerator is not None else backbone.device
    n = len(part)
    per = math.ceil(n / world) if n else 0
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    dataset = torch.utils.data.Subset(part_dataset(part, backbone), range(lo, hi))
    # own generator: iterating must not consume the global RNG (training randomness)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    outs: list[list[torch.Tensor]] = [[] for _ in label_sets]
    was_training = scorer.training
    scorer.eval()
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast("cpu", enabled=False)
    try:
        with autocast:
            for batch in tqdm(loader, desc=f"scoring {scorer.name}", disable=not progress, leave=False):
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                g, l = features(batch, backbone)
                for j, labels in enumerate(label_sets):
                    outs[j].append(scorer(g, l, labels))
    finally:
        scorer.train(was_training)
    results = []
    for j, labels in enumerate(label_sets):
        local = torch.cat(outs[j]) if outs[j] else torch.zeros(0, len(labels), device=device)
        if world > 1:
            pad = torch.zeros(per - local.shape[0], len(labels), device=local.device, dtype=local.dtype)
            local = accelerator.gather(torch.cat([local, pad]))[:n]
        results.append(local.cpu())
    return results
