"""DualCoOp (Sun, Hu, Saenko, NeurIPS 2022): a positive and a negative learnable prompt per
label, scored on the image's regions (patch tokens), trained with the asymmetric loss.

Two contexts shared by all labels, v+ (M+, W) and v- (M-, W), give two embeddings per
label through the frozen text encoder E (as CoOp, :mod:`sigrl.modules.prompt_learner`)::

    T+[c] = E([SOS] v+ template(label_c) [EOS]),   T-[c] = E([SOS] v- template(label_c) [EOS])

Scoring (class-specific region aggregation), per image b, label c, region (patch) p, with
the local tokens normalised per patch (l_p = L_p / ||L_p||)::

    a±[p]  = s · <l_p, T±[c]>                      similarity of every region to both prompts
    w[p]   = softmax_p(a+[p])                      regions weighted by the *positive* similarity
    z±     = λ · Σ_p w[p] a±[p]                    the two aggregated scores
    P(c present | b) = softmax over {z-, z+} [+] = sigmoid(z+ - z-)

``s`` = ``spatial_scale`` (20) and ``λ`` = ``logit_scale`` (5) are the reference's
constants (the aggregation temperature and the output scale, 100 on the cosine together).
The logit returned for label c is ``z+ - z-``, so ``sigmoid(logit)`` is that two-way
softmax: a probability of each label on its own, which does not depend on the other labels
of the set (no normalisation over labels anywhere) and transfers to any label name.
Trained with :class:`sigrl.losses.asl.AsymmetricLoss` (``loss.name: asl``).

Both embeddings come from one encoder call (one context per row, 2C rows) when M+ = M-.

Shapes:
    - **input:** ``global_feats`` (B, D) (unused), ``local_feats`` (B, P, D) raw tokens, C labels
    - **output:** logits (B, C); :meth:`DualCoOpPrompts.pair` -> (T+ (C, D), T- (C, D))
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import CheckpointError, UsageError
from sigrl.modules.prompt_learner import CONTEXT_KEY, LearnedPrompts

__all__ = ["DualCoOpPrompts", "dualcoop_logits", "NEGATIVE_KEY"]

NEGATIVE_KEY = "prompt_context_negative"


def dualcoop_logits(local_feats: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor, *,
                    spatial_scale: float = 20.0, logit_scale: float = 5.0) -> torch.Tensor:
    """DualCoOp's per-label logit z+ - z- (module docstring).

    Args:
        local_feats: (B, P, D) patch tokens (normalised per patch here).
        pos_emb, neg_emb: (C, D) positive / negative prompt embeddings (normalised here).
    Returns:
        (B, C) logits; ``sigmoid`` gives each label's probability.
    """
    if local_feats is None or local_feats.dim() != 3:
        raise UsageError("DualCoOp scores the patch tokens: local_feats must be a (B, P, D) tensor")
    l = Fn.normalize(local_feats.float(), dim=-1)
    a_pos = spatial_scale * torch.einsum("bpd,cd->bcp", l, Fn.normalize(pos_emb.float(), dim=-1))
    a_neg = spatial_scale * torch.einsum("bpd,cd->bcp", l, Fn.normalize(neg_emb.float(), dim=-1))
    w = torch.softmax(a_pos, dim=-1)
    z_pos = logit_scale * (w * a_pos).sum(-1)
    z_neg = logit_scale * (w * a_neg).sum(-1)
    return z_pos - z_neg


class DualCoOpPrompts(LearnedPrompts):
    """Positive and negative context shared by all labels, DualCoOp's region scoring.

    Args:
        backbone: an open_clip backbone.
        prompts: the templates after each context ("{}." as the reference).
        n_ctx, init, init_std: as :class:`~sigrl.modules.prompt_learner.CoOpPrompts` (the
            positive context; the negative one too unless ``negative_init`` is given).
        negative_init: the negative context's phrase or "random" (None: as ``init``).
        spatial_scale, logit_scale: s and λ of the module docstring.

    ``forward(labels)`` gives the positive embeddings T+ (what a head consumes when one is
    trained jointly); :meth:`score` is DualCoOp's own rule. With a head, the logit of a
    label is the head's (on T+) plus DualCoOp's (:meth:`combine_with_head`).
    """

    name = "dualcoop"
    independent_scores = True

    def __init__(self, backbone, prompts=None, *, n_ctx: int = 4, init: str = "random", init_std: float = 0.02,
                 negative_init: str | None = None, spatial_scale: float = 20.0, logit_scale: float = 5.0,
                 generator=None, context: torch.Tensor | None = None,
                 negative_context: torch.Tensor | None = None):
        super().__init__(backbone, prompts)
        if context is None:
            context = self.initial_context(backbone, init, n_ctx, init_std, generator)
        if negative_context is None:
            neg_init = init if negative_init is None else negative_init
            negative_context = self.initial_context(backbone, neg_init, n_ctx, init_std, generator)
        self._context = nn.Parameter(context.float().to(backbone.device).clone())
        self.negative_context = nn.Parameter(negative_context.float().to(backbone.device).clone())
        self.spatial_scale, self.logit_scale = float(spatial_scale), float(logit_scale)
        self._stash = None  # (labels, T+, T-) of the last forward, used once by combine_with_head

    @property
    def context(self) -> torch.Tensor:
        return self._context

    @property
    def n_ctx(self) -> int:
        return int(self._context.shape[0])

    def forward(self, labels: list[str]) -> torch.Tensor:
        """T+ (C, D). The negative embeddings of the same encoder call are kept for the
        :meth:`combine_with_head` that follows (a head trained jointly): one encoding per step."""
        labels = list(labels)
        pos, neg = self._pair(labels)
        self._stash = (tuple(labels), pos, neg)
        return pos

    def pair(self, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T+ (C, D), T- (C, D)); one encoder call when both contexts have the same length."""
        return self._pair(list(labels))

    def _pair(self, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = self._context, self.negative_context
        if pos.shape != neg.shape or not labels:
            return self.embed(labels, pos), self.embed(labels, neg)
        C, nt = len(labels), len(self.prompts.templates)
        ids = self.tokens(labels)  # (nt*C, L)
        both = torch.cat([ids, ids])
        ctx = torch.cat([pos.unsqueeze(0).expand(nt * C, -1, -1), neg.unsqueeze(0).expand(nt * C, -1, -1)])
        out = self.backbone.encode_tokens(both, ctx).view(2, nt, C, -1)
        if nt > 1:
            out = Fn.normalize(out.mean(1), dim=-1)
        else:
            out = out[:, 0]
        return out[0], out[1]

    def label_tensors(self, labels: list[str]) -> dict[str, torch.Tensor]:
        """``{"T": T+ (C, D), "T_neg": T- (C, D)}``. Training (gradients on): one encoder call
        for the whole label set. Inference (no gradients): one call per label, so that a
        label's T± -- and hence its probability -- are bit-identical in any label set (one
        batched call gives other GEMM shapes, and prompts cut to the set's longest one:
        float32 differences of ~1e-7 in T, ~1e-5 in a logit, measured on this CPU)."""
        labels = list(labels)
        if torch.is_grad_enabled() or len(labels) <= 1:
            pos, neg = self.pair(labels)
        else:
            pairs = [self.pair([name]) for name in labels]
            pos, neg = torch.cat([p for p, _ in pairs]), torch.cat([n for _, n in pairs])
        return {"T": pos, "T_neg": neg}

    def score_prepared(self, global_feats, local_feats, label_tensors: dict, **match_options) -> torch.Tensor:
        """(B, C) DualCoOp logits (``match_options`` do not apply and are ignored)."""
        dev = local_feats.device if local_feats is not None else global_feats.device
        return dualcoop_logits(local_feats, label_tensors["T"].to(dev), label_tensors["T_neg"].to(dev),
                               spatial_scale=self.spatial_scale, logit_scale=self.logit_scale)

    def combine_prepared(self, head_logits, global_feats, local_feats, label_tensors: dict) -> torch.Tensor:
        return head_logits + self.score_prepared(global_feats, local_feats, label_tensors).to(head_logits.dtype)

    def combine_with_head(self, head_logits, global_feats, local_feats, labels) -> torch.Tensor:
        """With a head trained jointly (it consumed ``self(labels)`` = T+): head logit + DualCoOp's."""
        stash, self._stash = self._stash, None
        if stash is not None and stash[0] == tuple(labels):
            pos, neg = stash[1], stash[2]
        else:
            pos, neg = self._pair(list(labels))
        dev = local_feats.device if local_feats is not None else global_feats.device
        z = dualcoop_logits(local_feats, pos.to(dev), neg.to(dev), spatial_scale=self.spatial_scale,
                            logit_scale=self.logit_scale)
        return head_logits + z.to(head_logits.dtype)

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Each label's own probability sigmoid(z+ - z-) (rows do not sum to 1)."""
        return torch.sigmoid(scores)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {CONTEXT_KEY: self._context.detach().float().cpu().contiguous(),
                NEGATIVE_KEY: self.negative_context.detach().float().cpu().contiguous()}

    def describe(self) -> dict:
        return {**super().describe(), "n_ctx_negative": int(self.negative_context.shape[0]),
                "spatial_scale": self.spatial_scale, "logit_scale": self.logit_scale}

    @classmethod
    def from_saved(cls, backbone, prompts, info, tensors):
        if CONTEXT_KEY not in tensors or NEGATIVE_KEY not in tensors:
            raise CheckpointError(f"a dualcoop run holds {CONTEXT_KEY!r} and {NEGATIVE_KEY!r}; one is missing")
        return cls(backbone, prompts, context=tensors[CONTEXT_KEY], negative_context=tensors[NEGATIVE_KEY],
                   spatial_scale=float(info.get("spatial_scale", 20.0)), logit_scale=float(info.get("logit_scale", 5.0)))
