"""Local + global image-text matching (DESIGN.md section 2).

Used twice: as the training-free CLIP baseline (on the backbone's own patch tokens) and
as the last step of the SigRL head (on the reconstructed tokens R).

    s_g[b, c] = <g_b, T_c>                                   global score
    s_l[b, c] = mean of the top-k over p of <L_bp, T_c>      local score
    score     = (norm_C(s_l) + norm_C(s_g)) / 2

``norm_C`` is a softmax over the label axis at temperature ``tau`` (CLIP's 1/100 by
default), so each half is a distribution over the labels of one image and the two
halves are on the same scale. It depends only on the image's own scores: never on the
other images of the batch.
"""
from __future__ import annotations

import torch

MODES = ("local+global", "global", "local")


def global_scores(global_feats: torch.Tensor, label_emb: torch.Tensor) -> torch.Tensor:
    """global_feats: (B, D), label_emb: (C, D) -> (B, C) cosine similarities."""
    return global_feats @ label_emb.t()


def local_scores(local_feats: torch.Tensor, label_emb: torch.Tensor, top_k: int = 16) -> torch.Tensor:
    """local_feats: (B, P, D), label_emb: (C, D) -> (B, C): mean of the ``top_k`` largest
    patch similarities per label (all P patches when P < top_k)."""
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
    tau: float = 0.01,
    mode: str = "local+global",
) -> torch.Tensor:
    """The CLIP local+global matching score.

    Args:
        global_feats: (B, D) L2-normalised image embeddings.
        local_feats: (B, P, D) L2-normalised patch embeddings (unused when mode="global").
        label_emb: (C, D) L2-normalised label embeddings.
        mode: "local+global" (default), "global" or "local".
    Returns:
        (B, C) scores in [0, 1]; each row sums to 1.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "global":
        return normalize_over_labels(global_scores(global_feats, label_emb), tau)
    s_l = normalize_over_labels(local_scores(local_feats, label_emb, top_k), tau)
    if mode == "local":
        return s_l
    s_g = normalize_over_labels(global_scores(global_feats, label_emb), tau)
    return (s_l + s_g) / 2
