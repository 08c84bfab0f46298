"""The plain baseline head: a residual MLP adapter on the frozen image features.

What a simple trained head gets without a label graph or a reconstruction (DESIGN.md
section 6; the demo table shows it between CLIP matching and SigRL)::

    g'    = normalize(g + MLP_g(g))                     adapted global embedding
    L'_p  = normalize(L_p + MLP_l(L_p))                 adapted patch tokens
    MLP(x) = W_b gelu(W_a x + a) + b                    (D -> hidden -> D)
    s_g[b, c] = <g'_b, T_c>,  s_l[b, c] = mean of the top-k over p of <L'_bp, T_c>
    logits = log((softmax_C(scale s_l) + softmax_C(scale s_g)) / 2)   (as SigRLHead)

The label side is untouched (the frozen text embeddings T), so any label set works at any
call and no parameter depends on C. The second layer of each MLP starts at zero: an
untrained adapter head scores exactly like CLIP local+global matching
(``exp(logits) == match_scores(g, L, T, tau=1/scale)``).

Shapes:
    - **input:** ``global_feats`` (B, D), ``local_feats`` (B, P, D) (may be None when
      mode="global"), ``label_emb`` (C, D)
    - **output:** ``logits`` (B, C); with ``return_extras=True`` also a dict with
      ``local`` s_l (B, C) (None when mode="global"), ``global`` s_g (B, C),
      ``global_feats`` g' (B, D), ``local_feats`` L' (B, P, D), ``label_feats`` F (B, C, D)
      (F[b, c] = sum_p softmax_p(scale <L'_bp, T_c>) L'_bp, the patches attention-pooled
      for each label; what the conditional-transport loss aligns), ``scale``
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import ConfigError
from sigrl.modules.head import (COMBINES, LogitBias, LogitScale, _check_choice, _ConfigMixin, check_features,
                                combine_scores)
from sigrl.modules.matching import MODES, global_scores, local_scores


class ResidualMLP(nn.Module):
    """``normalize(x + W_b gelu(W_a x + a) + b)`` over the last axis; the second layer
    starts at zero (identity map up to the normalisation).

    Shapes:
        - **input:** (..., D)
        - **output:** (..., D), L2-normalised
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Fn.normalize(x + self.fc2(self.drop(Fn.gelu(self.fc1(x)))), dim=-1)


class AdapterHead(_ConfigMixin, nn.Module):
    """Residual MLP adapters on the global and local image features + local/global matching.

    Args:
        embed_dim: D.
        hidden: MLP hidden width (default D // 2).
        top_k: patches averaged in the local score.
        mode: "local+global", "global" or "local".
        shared: one MLP for global and local features (default: one each).
        dropout: dropout inside the MLPs.
        logit_scale, learn_logit_scale, logit_bias, combine: as in :class:`~sigrl.modules.head.SigRLHead`.
    """

    _CONFIG_KEYS = ("embed_dim", "hidden", "top_k", "mode", "shared", "dropout", "logit_scale",
                    "learn_logit_scale", "logit_bias", "combine")

    def __init__(
        self,
        embed_dim: int,
        *,
        hidden: int | None = None,
        top_k: int = 16,
        mode: str = "local+global",
        shared: bool = False,
        dropout: float = 0.0,
        logit_scale: float = 100.0,
        learn_logit_scale: bool = False,
        logit_bias: float | None = None,
        combine: str = "softmax",
    ):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ConfigError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        hidden = max(1, embed_dim // 2) if hidden is None else hidden
        for name, v in (("hidden", hidden), ("top_k", top_k)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        _check_choice("mode", mode, MODES)
        _check_choice("combine", combine, COMBINES)
        self.embed_dim, self.hidden, self.top_k, self.mode = embed_dim, hidden, top_k, mode
        self.shared, self.dropout, self.combine = bool(shared), float(dropout), combine
        self.scale = LogitScale(logit_scale, learn_logit_scale)
        self.bias = LogitBias(logit_bias)
        self.global_adapter = ResidualMLP(embed_dim, hidden, dropout)
        self.local_adapter = None if self.shared else ResidualMLP(embed_dim, hidden, dropout)

    def forward(
        self,
        global_feats: torch.Tensor,
        local_feats: torch.Tensor | None,
        label_emb: torch.Tensor,
        *,
        label_names: list[str] | None = None,  # unused: same signature as SigRLHead
        return_extras: bool = False,
    ):
        check_features("AdapterHead", self.embed_dim, global_feats, local_feats, label_emb,
                       need_local=self.mode != "global")
        p = self.global_adapter.fc1.weight
        T = Fn.normalize(label_emb.to(device=p.device, dtype=p.dtype), dim=-1)
        g = self.global_adapter(Fn.normalize(global_feats.to(device=p.device, dtype=p.dtype), dim=-1))
        L = s_l = None
        if self.mode != "global" or (return_extras and local_feats is not None):
            adapter = self.global_adapter if self.local_adapter is None else self.local_adapter
            L = adapter(Fn.normalize(local_feats.to(device=p.device, dtype=p.dtype), dim=-1))
            s_l = local_scores(L, T, self.top_k)
        s_g = global_scores(g, T)
        scale = self.scale()
        logits = self.bias(combine_scores(s_l, s_g, scale, mode=self.mode, combine=self.combine))
        if not return_extras:
            return logits
        F = None
        if L is not None:  # label-specific features: each label's attention-pooled patches
            attn = torch.softmax(scale * torch.einsum("bpd,cd->bcp", Fn.normalize(L, dim=-1), T), dim=-1)
            F = torch.einsum("bcp,bpd->bcd", attn, L)
        return logits, {"local": s_l, "global": s_g, "global_feats": g, "local_feats": L, "label_feats": F,
                        "scale": scale}
