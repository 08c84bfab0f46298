"""Prompt learners: label names -> label embeddings T (C, D) through the frozen text encoder.

One learner per run, chosen by ``prompts.learner`` (:data:`sigrl.registry.PROMPT_LEARNERS`)::

    fixed     T[c] = normalize(mean_t normalize(E(template_t(label_c))))   hand-written prompts
    coop      T[c] = normalize(mean_t normalize(E([SOS] v_1..v_M template_t(label_c) [EOS])))
              (Zhou et al., CoOp, IJCV 2022): M context vectors v (M, W) shared by all labels,
              so a label never seen in training gets the learnt context too
    csc       the same with class-specific context v^c (C_train, M, W) (CoOp's "CSC"): one
              context per training label; an unseen label has none and is refused
    dualcoop  a positive and a negative shared context (sigrl.modules.dualcoop)

``E`` is the frozen text transformer (token embeddings -> EOT feature -> projection); the
context vectors sit in its token-embedding space (width W) right after the start token, in
place of words. ``template_t`` are the prompt set's templates (``prompts.name``): for CoOp
proper the template is ``"{}."`` and the context replaces the words of a hand prompt. The
context starts from a phrase (``prompts.init: "a photo of a"``: the phrase's own token
embeddings, M = its token count; then ``coop`` with template ``"{}."`` starts exactly at the
hand prompt ``"a photo of a {}."``) or at random (``init: random``: N(0, init_std²), M =
``n_ctx``).

Cost (the text encoder runs in every training step): the learner encodes exactly the label
set it is given (the training labels; never a fixed C), every template of it in **one**
encoder call, token ids tokenized once per label set and cut to the longest prompt plus M
(sequence length L+M, not the encoder's full context), and only the context vectors need
gradients (the encoder's weights are frozen, so backward computes no weight gradients).
A fixed learner computes each label's embedding once and keeps it.

Every learner also scores on its own (``head.class: none``, the CoOp/DualCoOp setting):
:meth:`PromptLearner.score` is CLIP local+global matching
(:func:`sigrl.modules.matching.match_scores`) with the learnt T; DualCoOp has its own rule.

Shapes:
    - **input:** ``labels``: C label names
    - **output:** ``T`` (C, D) L2-normalised; ``score(g (B, D), l (B, P, D), labels)`` -> (B, C)
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import CheckpointError, ConfigError, UsageError
from sigrl.modules.matching import match_scores
from sigrl.prompts import PromptSet, embed_labels, load_prompts

__all__ = ["PromptLearner", "FixedPrompts", "CoOpPrompts", "ClassSpecificPrompts", "learner_name",
           "build_learner", "learner_from_saved", "phrase_context", "CONTEXT_KEY"]

#: the run-file key of the (positive) context; "prompt_" + name for every tensor a learner saves
CONTEXT_KEY = "prompt_context"


def learner_name(prompts_cfg) -> str:
    """The learner a ``prompts`` config section asks for: ``prompts.learner``, with the
    older ``prompts.tune: true`` read as ``coop`` (ConfigError when both disagree)."""
    name = str(prompts_cfg.learner).lower()
    if prompts_cfg.tune:
        if name not in ("fixed", "coop"):
            raise ConfigError(f"prompts.tune=true is the old spelling of prompts.learner=coop; it contradicts "
                              f"prompts.learner={name} (remove prompts.tune)")
        return "coop"
    return name


def phrase_context(backbone, phrase: str) -> torch.Tensor:
    """The token embeddings (M, W) of ``phrase`` (without start/end tokens): CoOp's
    initialisation "a photo of a" -> M = 4 vectors."""
    emb = getattr(getattr(backbone, "model", None), "token_embedding", None)
    if emb is None:
        raise ConfigError("prompts.init: a phrase needs an open_clip text encoder with its own token embedding; "
                          "use init: random")
    ids = backbone.tokenize([phrase])[0]
    eot = int(ids.argmax())
    if eot <= 1:
        raise ConfigError(f"prompts.init: the phrase {phrase!r} has no tokens")
    with torch.no_grad():
        return emb(ids[1:eot].to(emb.weight.device)).detach().float().cpu().clone()


def _encode(backbone, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """tokens (N, L) (cut), context (M, W) shared or (N, M, W) one per row -> (N, D)."""
    return backbone.encode_tokens(tokens, context)


class PromptLearner(nn.Module):
    """Base class: label names -> T (C, D); the backbone is held, never a submodule (it is
    frozen, shared and never saved with a run).

    Subclasses set ``name`` (the registry name) and implement :meth:`forward`; learners with
    parameters implement :meth:`tensors` / :meth:`describe` (what a run file stores) and
    :meth:`from_saved`.
    """

    name = "fixed"
    #: True: T depends only on the label's own name (any label set, any time)
    open_vocabulary = True
    #: True: the head-less :meth:`score` of a label never depends on the other labels
    independent_scores = False

    def __init__(self, backbone, prompts: PromptSet | str | None = None):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.prompts = load_prompts(prompts)

    # -- what a run stores ------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Learnt tensors by run-file key (``prompt_*``); {} for fixed prompts."""
        return {}

    def describe(self) -> dict:
        """JSON facts to rebuild the learner (``run.json`` "prompt_learner")."""
        return {"name": self.name, "n_ctx": self.n_ctx}

    @property
    def n_ctx(self) -> int:
        return 0

    @property
    def context(self) -> torch.Tensor | None:
        """The (positive) context, or None (kept for code reading ``text.context``)."""
        return None

    @classmethod
    def from_saved(cls, backbone, prompts, info: dict, tensors: dict[str, torch.Tensor]) -> "PromptLearner":
        return cls(backbone, prompts)

    # -- scoring ----------------------------------------------------------------------------
    def check_labels(self, labels: list[str]) -> None:
        """Raise UsageError for label names this learner cannot embed (csc: unseen ones)."""

    def score(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None, labels: list[str],
              **match_options) -> torch.Tensor:
        """Scores (B, C) without a head: CLIP local+global matching with this learner's T."""
        return self.score_prepared(global_feats, local_feats, self.label_tensors(list(labels)), **match_options)

    # -- the label side once, the image side per batch (sigrl.scorer.Scorer.prepare) ---------
    def label_tensors(self, labels: list[str]) -> dict[str, torch.Tensor]:
        """What scoring needs of a label set, computed once: ``{"T": (C, D)}``."""
        return {"T": self(list(labels))}

    def score_prepared(self, global_feats, local_feats, label_tensors: dict, **match_options) -> torch.Tensor:
        """:meth:`score` on :meth:`label_tensors`' output."""
        return match_scores(global_feats, local_feats, label_tensors["T"].to(global_feats.device), **match_options)

    def combine_prepared(self, head_logits: torch.Tensor, global_feats, local_feats, label_tensors: dict) -> torch.Tensor:
        """:meth:`combine_with_head` on :meth:`label_tensors`' output."""
        return head_logits

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """What a tagger shows for the head-less :meth:`score`: the matching rule's own scores."""
        return scores

    def combine_with_head(self, head_logits: torch.Tensor, global_feats, local_feats, labels) -> torch.Tensor:
        """The logits of a head trained jointly with this learner (the head consumed
        ``self(labels)``): the head's own here; DualCoOp adds its per-label logit."""
        return head_logits

    def forward(self, labels: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FixedPrompts(PromptLearner):
    """Hand-written prompts (``prompts.name``): the embeddings of each label set are computed
    once, without gradients, and kept."""

    name = "fixed"

    def __init__(self, backbone, prompts: PromptSet | str | None = None):
        super().__init__(backbone, prompts)
        self._fixed: dict[tuple, torch.Tensor] = {}

    def forward(self, labels: list[str]) -> torch.Tensor:
        key = (self.prompts.key, tuple(labels))
        if key not in self._fixed:
            with torch.no_grad():
                self._fixed[key] = embed_labels(self.backbone, list(labels), self.prompts).detach()
        return self._fixed[key]


class LearnedPrompts(PromptLearner):
    """Shared machinery of the learners with context vectors: token ids cached per label set,
    all templates in one encoder call, a per-row context (N, M, W) or a shared one (M, W)."""

    def __init__(self, backbone, prompts=None):
        super().__init__(backbone, prompts)
        if not hasattr(backbone, "text_width"):
            raise ConfigError(f"prompts.learner={self.name} needs an open_clip backbone with its own text transformer")
        self._tokens: dict[tuple, torch.Tensor] = {}

    def tokens(self, labels: list[str]) -> torch.Tensor:
        """(T·C, L) token ids: template-major rows (template t, label c at t·C + c), cut to
        the longest prompt; tokenized once per label set."""
        key = (self.prompts.key, tuple(labels))
        if key not in self._tokens:
            from sigrl.backbones.base import cut_to_longest

            texts = [t.replace("{}", l) for t in self.prompts.templates for l in labels]
            ids = cut_to_longest(self.backbone.tokenize(texts))
            room = self.backbone.context_length - self.n_ctx
            if ids.shape[1] > room:
                longest = max(texts, key=len)
                import sys

                print(f"sigrl: warning: prompt '{longest[:60]}' with {self.n_ctx} context vectors is longer than the "
                      f"text context ({self.backbone.context_length} tokens); it is cut", file=sys.stderr)
            if len(self._tokens) > 64:
                self._tokens.clear()
            self._tokens[key] = ids
        return self._tokens[key].to(self.backbone.device)

    def embed(self, labels: list[str], context: torch.Tensor) -> torch.Tensor:
        """T (C, D) for ``context`` (M, W) shared, or (C, M, W) one per label."""
        C, nt = len(labels), len(self.prompts.templates)
        if C == 0:
            return torch.zeros(0, self.backbone.embed_dim, device=self.backbone.device)
        ids = self.tokens(labels)
        ctx = context.to(self.backbone.device)
        if ctx.dim() == 3 and nt > 1:
            ctx = ctx.repeat(nt, 1, 1)
        out = _encode(self.backbone, ids, ctx).view(nt, C, -1)
        if nt == 1:
            return out[0]
        return Fn.normalize(out.mean(0), dim=-1)

    @staticmethod
    def initial_context(backbone, init: str, n_ctx: int, init_std: float, generator=None) -> torch.Tensor:
        """(M, W): the phrase's token embeddings, or N(0, init_std²) with M = n_ctx for "random"."""
        if init and init.strip().lower() not in ("random", "rand", ""):
            return phrase_context(backbone, init.strip())
        return torch.randn(n_ctx, backbone.text_width, generator=generator) * init_std


class CoOpPrompts(LearnedPrompts):
    """CoOp: M context vectors shared by all labels (transfers to unseen label names).

    Args:
        backbone: an open_clip backbone (context enters its token-embedding space).
        prompts: the templates that follow the context ("{}." for CoOp proper).
        n_ctx, init, init_std: M; "random" or a phrase; the random init's std.
        generator: torch.Generator for the random init (the run's seed).
    """

    name = "coop"

    def __init__(self, backbone, prompts=None, *, n_ctx: int = 4, init: str = "random", init_std: float = 0.02,
                 generator=None, context: torch.Tensor | None = None):
        super().__init__(backbone, prompts)
        init_ctx = context if context is not None else self.initial_context(backbone, init, n_ctx, init_std, generator)
        self._context = nn.Parameter(init_ctx.float().to(backbone.device).clone())

    @property
    def context(self) -> torch.Tensor:
        return self._context

    @property
    def n_ctx(self) -> int:
        return int(self._context.shape[0])

    def forward(self, labels: list[str]) -> torch.Tensor:
        return self.embed(list(labels), self._context)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {CONTEXT_KEY: self._context.detach().float().cpu().contiguous()}

    @classmethod
    def from_saved(cls, backbone, prompts, info, tensors):
        if CONTEXT_KEY not in tensors or tensors[CONTEXT_KEY].dim() != 2:
            raise CheckpointError(f"a coop run holds a ({info.get('n_ctx')}, W) tensor {CONTEXT_KEY!r}; it is missing "
                                  "or has another shape")
        return cls(backbone, prompts, context=tensors[CONTEXT_KEY])


class ClassSpecificPrompts(LearnedPrompts):
    """CoOp's class-specific context (CSC): one (M, W) context per training label.

    Seen labels only: a label name outside ``label_names`` has no context, so scoring it
    (unseen labels at eval or tag time, a zero-shot dataset's unseen split) raises
    UsageError; use ``coop`` or ``dualcoop`` for label names never trained on.
    """

    name = "csc"
    open_vocabulary = False

    def __init__(self, backbone, prompts=None, *, label_names: list[str], n_ctx: int = 4, init: str = "random",
                 init_std: float = 0.02, generator=None, context: torch.Tensor | None = None):
        super().__init__(backbone, prompts)
        self.label_names = list(label_names)
        self._index = {n: i for i, n in enumerate(self.label_names)}
        if context is None:
            if init and init.strip().lower() not in ("random", "rand", ""):
                one = phrase_context(backbone, init.strip())
                context = one.unsqueeze(0).repeat(len(self.label_names), 1, 1)
            else:
                context = torch.randn(len(self.label_names), n_ctx, backbone.text_width, generator=generator) * init_std
        if context.dim() != 3 or context.shape[0] != len(self.label_names):
            raise CheckpointError(f"csc context must be (C={len(self.label_names)}, M, W), got {tuple(context.shape)}")
        self._context = nn.Parameter(context.float().to(backbone.device).clone())

    @property
    def context(self) -> torch.Tensor:
        return self._context

    @property
    def n_ctx(self) -> int:
        return int(self._context.shape[1])

    def check_labels(self, labels: list[str]) -> None:
        unknown = [l for l in labels if l not in self._index]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise UsageError(f"prompt learner csc (class-specific context) has a context only for its "
                             f"{len(self.label_names)} training labels; no context for {shown}. "
                             "csc cannot score label names it was not trained on: train with "
                             "prompts.learner=coop or dualcoop for unseen labels")

    def forward(self, labels: list[str]) -> torch.Tensor:
        labels = list(labels)
        self.check_labels(labels)
        idx = torch.as_tensor([self._index[l] for l in labels], device=self._context.device, dtype=torch.long)
        return self.embed(labels, self._context[idx])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {CONTEXT_KEY: self._context.detach().float().cpu().contiguous()}

    def describe(self) -> dict:
        return {**super().describe(), "labels": list(self.label_names)}

    @classmethod
    def from_saved(cls, backbone, prompts, info, tensors):
        if CONTEXT_KEY not in tensors or "labels" not in info:
            raise CheckpointError("a csc run holds its context and its label names; one is missing")
        return cls(backbone, prompts, label_names=list(info["labels"]), context=tensors[CONTEXT_KEY])


def build_learner(cfg, backbone, prompts, train_labels: list[str], *, zero_shot: bool = False,
                  generator=None) -> PromptLearner:
    """The learner of a run config (``cfg.prompts``): ``learner``, ``n_ctx``, ``init``,
    ``negative_init``, ``init_std``, ``options``.

    Raises ConfigError for ``csc`` on a zero-shot dataset (its unseen labels would have no
    context: the trainer evaluates them every epoch).
    """
    from sigrl.registry import PROMPT_LEARNERS

    p = cfg.prompts
    name = learner_name(p)
    cls = PROMPT_LEARNERS.get(name)
    if name == "fixed":
        return cls(backbone, prompts)
    if name == "csc" and zero_shot:
        raise ConfigError("prompts.learner=csc learns one context per training label and cannot embed the dataset's "
                          "unseen labels (ZSL/GZSL evaluation); use coop or dualcoop, or data.all_labels=true")
    kw = dict(n_ctx=p.n_ctx, init=p.init, init_std=p.init_std, generator=generator, **dict(p.options))
    if name == "csc":
        kw["label_names"] = list(train_labels)
    if name == "dualcoop":
        kw["negative_init"] = p.negative_init
    try:
        return cls(backbone, prompts, **kw)
    except TypeError as err:
        raise ConfigError(f"prompts.options do not fit prompt learner {name}: {err}") from None


def learner_from_saved(backbone, prompts, info: dict | None, tensors: dict[str, torch.Tensor]) -> PromptLearner:
    """The learner a run file describes (``run.json`` "prompt_learner" + its ``prompt_*``
    tensors); runs written before learners existed: a context means coop, none fixed."""
    from sigrl.registry import PROMPT_LEARNERS

    info = dict(info or {})
    name = info.get("name") or ("coop" if CONTEXT_KEY in tensors else "fixed")
    if name not in PROMPT_LEARNERS:
        raise CheckpointError(f"unknown prompt learner {name!r} in run.json; known: {', '.join(PROMPT_LEARNERS.names)}")
    try:
        cls = PROMPT_LEARNERS.get(name)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return cls.from_saved(backbone, prompts, info, tensors)
