"""The plain baseline head: a residual MLP adapter on the frozen image features.

What a simple trained head gets without a label graph or a reconstruction (docs/design.md
§6; the demo table shows it between CLIP matching and SigRL)::

    g'    = normalize(g' + MLP_g(g')),  g' = normalize(g)       adapted global embedding
    L'_p  = L_p + MLP_l(L_p)                 combine="l2": raw tokens, as CLIP matching's rule
    L'_p  = normalize(l_p + MLP_l(l_p)), l_p = normalize(L_p)   other combines
    MLP(x) = W_b gelu(W_a x + a) + b                    (D -> hidden -> D)
    s_g[b, c] = <g'_b, T_c>,  s_l[b, c] = mean of the top-k over p of <L'_bp, T_c>
    logits = combine(s_l, s_g)                          (sigrl.modules.scoring)

``combine="softmax"`` (default; the adapter is our own head, not a paper's):
``log((softmax_C(scale s_l) + softmax_C(scale s_g)) / 2)`` with scale 100;
``combine="l2"``: ``scale (s_l/||s_l|| + s_g/||s_g||) / 2`` with scale 1, the reference
CLIP matching rule on raw tokens.

The label side is untouched (the frozen text embeddings T), so any label set works at any
call and no parameter depends on C. The second layer of each MLP starts at zero: an
untrained adapter head scores exactly like CLIP local+global matching under the same rule
(``exp(logits) == match_scores(g, L, T, combine="softmax", tau=1/scale)``;
``logits == match_scores(g, L, T, combine="l2")`` with scale 1).

Shapes:
    - **input:** ``global_feats`` (B, D), ``local_feats`` (B, P, D) raw tokens (may be
      None when mode="global"), ``label_emb`` (C, D)
    - **output:** ``logits`` (B, C); with ``return_extras=True`` also a dict with
      ``local`` s_l (B, C) (None when mode="global"), ``global`` s_g (B, C),
      ``global_feats`` g' (B, D), ``local_feats`` L' (B, P, D), ``label_feats`` F (B, C, D)
      (F[b, c] = sum_p softmax_p(t <L'_bp / |L'_bp|, T_c>) L'_bp, the patches
      attention-pooled for each label, t = scale, or 100 under "l2"; what the
      conditional-transport loss aligns), ``scale``
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import ConfigError
from sigrl.modules.matching import MODES, global_scores, local_scores
from sigrl.modules.scoring import (COMBINES, LogitBias, LogitScale, _check_choice, _ConfigMixin, check_features,
                                   combine_scores, default_logit_scale)

#: the attention temperature of ``label_feats`` under combine="l2" (whose scale is 1)
POOL_SCALE_L2 = 100.0


class ResidualMLP(nn.Module):
    """``normalize(x + W_b gelu(W_a x + a) + b)`` over the last axis (``normalize=False``
    in :meth:`forward`: without the normalisation); the second layer starts at zero
    (identity map up to the normalisation).

    Shapes:
        - **input:** (..., D)
        - **output:** (..., D), L2-normalised unless ``normalize=False``
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        y = x + self.fc2(self.drop(Fn.gelu(self.fc1(x))))
        return Fn.normalize(y, dim=-1) if normalize else y


class AdapterHead(_ConfigMixin, nn.Module):
    """Residual MLP adapters on the global and local image features + local/global matching.

    Args:
        embed_dim: D.
        hidden: MLP hidden width (default D // 2).
        top_k: patches averaged in the local score.
        mode: "local+global", "global" or "local".
        shared: one MLP for global and local features (default: one each).
        dropout: dropout inside the MLPs.
        logit_scale, learn_logit_scale, logit_bias: as in :class:`~sigrl.modules.head.SigRLHead`
            (``logit_scale`` None: 1 for combine "l2", 100 otherwise).
        combine: "softmax" (default), "l2" (the reference CLIP matching rule, raw local
            tokens) or "mean".
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
        logit_scale: float | None = None,
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
        logit_scale = default_logit_scale(combine) if logit_scale is None else logit_scale
        self.embed_dim, self.hidden, self.top_k, self.mode = embed_dim, hidden, top_k, mode
        self.shared, self.dropout, self.combine = bool(shared), float(dropout), combine
        self.scale = LogitScale(logit_scale, learn_logit_scale)
        self.bias = LogitBias(logit_bias)
        self.global_adapter = ResidualMLP(embed_dim, hidden, dropout)
        self.local_adapter = None if self.shared else ResidualMLP(embed_dim, hidden, dropout)

    def prepare_labels(self, label_emb: torch.Tensor, label_names: list[str] | None = None, *,
                       extras: bool = False) -> dict:
        """The label side (labels alone): ``T`` (C, D) normalised; as :meth:`SigRLHead.prepare_labels`."""
        p = self.global_adapter.fc1.weight
        return {"T": Fn.normalize(label_emb.to(device=p.device, dtype=p.dtype), dim=-1)}

    def score_prepared(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None, labels: dict, *,
                       return_extras: bool = False):
        """The image side: features (B, D), (B, P, D) and :meth:`prepare_labels`' dict -> logits (B, C)."""
        check_features("AdapterHead", self.embed_dim, global_feats, local_feats, labels["T"],
                       need_local=self.mode != "global")
        p = self.global_adapter.fc1.weight
        T = labels["T"]
        g = self.global_adapter(Fn.normalize(global_feats.to(device=p.device, dtype=p.dtype), dim=-1))
        L = s_l = None
        if self.mode != "global" or (return_extras and local_feats is not None):
            adapter = self.global_adapter if self.local_adapter is None else self.local_adapter
            L = local_feats.to(device=p.device, dtype=p.dtype)
            if self.combine == "l2":  # raw tokens, as the reference CLIP matching
                L = adapter(L, normalize=False)
            else:
                L = adapter(Fn.normalize(L, dim=-1))
            s_l = local_scores(L, T, self.top_k)
        s_g = global_scores(g, T)
        scale = self.scale()
        logits = self.bias(combine_scores(s_l, s_g, scale, mode=self.mode, combine=self.combine))
        if not return_extras:
            return logits
        F = None
        if L is not None:  # label-specific features: each label's attention-pooled patches
            t = POOL_SCALE_L2 if self.combine == "l2" else scale
            attn = torch.softmax(t * torch.einsum("bpd,cd->bcp", Fn.normalize(L, dim=-1), T), dim=-1)
            F = torch.einsum("bcp,bpd->bcd", attn, L)
        return logits, {"local": s_l, "global": s_g, "global_feats": g, "local_feats": L, "label_feats": F,
                        "scale": scale}

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
        return self.score_prepared(global_feats, local_feats, self.prepare_labels(label_emb),
                                   return_extras=return_extras)
