"""Local + global image-text matching (docs/design.md §2).

Used twice: as the training-free CLIP baseline (on the backbone's own patch tokens) and
as the last step of the SigRL head (on the reconstructed tokens R).

Inputs are the backbone's outputs as they come: the global embedding ``g`` (any norm),
the *raw* projected patch tokens ``L`` (not normalised, see
:meth:`sigrl.backbones.base.Backbone.encode_images`) and the label embeddings ``T``.
``g`` and ``T`` are L2-normalised here (idempotent)::

    s_g[b, c] = <g_b, T_c>                                        global score (a cosine)
    s_l[b, c] = mean of the top-k over p of <L_bp, T_c>           local score

    combine="l2"       score = (s_l / ||s_l||_2 + s_g / ||s_g||_2) / 2      (reference, default)
    combine="softmax"  score = (softmax_C(s_l' / tau) + softmax_C(s_g / tau)) / 2   (ours)

``combine="l2"`` is the reference SigRL / MKT rule (MVL-Lab/SigRL ``OV/models/clip_vit.py``,
``forward`` with ``norm_pred=True``): the top-k runs on the raw tokens, and each part is
divided by its L2 norm over the label set of the image; scores lie in [-1, 1].
``combine="softmax"`` is our variant: the tokens are L2-normalised per patch first (so
``s_l'`` is a cosine, as ``s_g``), each part becomes a distribution over the labels at
temperature ``tau`` (CLIP's 1/100), and the rows of the score sum to 1.

Both rules depend only on the image's own scores: never on the other images of the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn

from sigrl.modules.scoring import l2_over_labels

MODES = ("local+global", "global", "local")
MATCH_COMBINES = ("l2", "softmax")


def global_scores(global_feats: torch.Tensor, label_emb: torch.Tensor) -> torch.Tensor:
    """global_feats: (B, D), label_emb: (C, D) -> (B, C) inner products (cosines when
    both are L2-normalised)."""
    return global_feats @ label_emb.t()


def local_scores(local_feats: torch.Tensor, label_emb: torch.Tensor, top_k: int = 16) -> torch.Tensor:
    """local_feats: (B, P, D), label_emb: (C, D) -> (B, C): mean of the ``top_k`` largest
    patch inner products per label (all P patches when P < top_k). No normalisation here:
    raw tokens give the reference's raw scores."""
    sim = torch.einsum("bpd,cd->bcp", local_feats, label_emb)  # (B, C, P)
    k = min(top_k, sim.shape[-1])
    return sim.topk(k, dim=-1).values.mean(dim=-1)


def normalize_over_labels(scores: torch.Tensor, tau: float = 0.01) -> torch.Tensor:
    """(B, C) -> (B, C), softmax over C at temperature ``tau``; rows sum to 1."""
    return torch.softmax(scores / tau, dim=-1)


def match_scores(
    global_feats: torch.Tensor,
    local_feats: torch.Tensor | None,
    label_emb: torch.Tensor,
    *,
    top_k: int = 16,
    mode: str = "local+global",
    combine: str = "l2",
    tau: float = 0.01,
) -> torch.Tensor:
    """The CLIP local+global matching score (formulas in the module docstring).

    Args:
        global_feats: (B, D) image embeddings (normalised here).
        local_feats: (B, P, D) raw projected patch tokens (unused when mode="global";
            normalised per patch here only for ``combine="softmax"``).
        label_emb: (C, D) label embeddings (normalised here).
        top_k: patches averaged in the local score (16 in the reference).
        mode: "local+global" (default), "global" or "local".
        combine: "l2" (the reference rule, default) or "softmax" (ours).
        tau: softmax temperature (``combine="softmax"`` only).
    Returns:
        (B, C) scores: in [-1, 1] for "l2"; in [0, 1] with rows summing to 1 for "softmax".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if combine not in MATCH_COMBINES:
        raise ValueError(f"combine must be one of {MATCH_COMBINES}, got {combine!r}")
    T = Fn.normalize(label_emb, dim=-1)
    norm = l2_over_labels if combine == "l2" else (lambda s: normalize_over_labels(s, tau))
    parts = []
    if mode != "local":
        parts.append(norm(global_scores(Fn.normalize(global_feats, dim=-1), T)))
    if mode != "global":
        L = local_feats if combine == "l2" else Fn.normalize(local_feats, dim=-1)
        parts.append(norm(local_scores(L, T, top_k)))
    return sum(parts) / len(parts)
