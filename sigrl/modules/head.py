"""The SigRL head: GMC + SVFR + local/global matching (DESIGN.md sections 2 and 3).

On frozen backbone features of a batch and the embeddings of any label set::

    graph = the label graph of this call (complete, k-NN or co-occurrence)
    T_g   = GMC(T, graph)                                    graph-refined label embeddings
    R, F  = SVFR(L, T, T_g)                                  reconstructed tokens, label features
    s_l[b, c] = mean of the top-k over p of <R_bp / |R_bp|, T_c>     local score
    s_g[b, c] = <g_b, T_c>                                           global score
    logits = log((softmax_C(scale s_l) + softmax_C(scale s_g)) / 2)  combine="softmax"

so ``exp(logits)`` is exactly DESIGN.md's score ``(norm_C(s_l) + norm_C(s_g)) / 2`` with
``tau = 1 / scale`` (:func:`sigrl.modules.matching.match_scores` applied to R). The
logits are log-probabilities over the label set of each image: their per-image ranking
and their ranking of images for a label are those of the score, and a ranking loss can
train on them. ``combine="mean"`` gives raw ``scale * (s_l + s_g) / 2`` instead.
``mode="global"`` / ``"local"`` keep one of the two parts.

Scores use the text embeddings ``T``, not ``T_g`` (``score_with="text"``, the default):
R is a re-weighting of the frozen patch tokens, so it stays in the CLIP joint space that
T lives in, and T is the same anchor for seen and unseen labels, whereas GMC is trained
on seen labels only and could move the unseen anchors. The graph still shapes every
score through ``U = W2 [F'; T_g]`` in the reconstruction. ``score_with="graph"`` scores
with ``T_g``.

The head never touches a backbone, works for any number of labels C at any call, and has
no parameter whose shape depends on C. The only C-sized tensors it may hold are the
label prior buffers (``prior_counts`` (C', C'), ``prior_label_counts`` (C',)) set by
:meth:`SigRLHead.set_label_prior` for ``graph="cooc"``; their label names go into
``head.config``, so ``SigRLHead.from_config(head.config)`` followed by
``load_state_dict`` rebuilds an identical head.

Where we differ from the reference SigRL code: the label graph is an explicit input
(see :mod:`sigrl.modules.gmc`) instead of GATv2 attention over an implicit complete
graph, and SVFR's interaction step uses per-image norms (see :mod:`sigrl.modules.svfr`).

Shapes:
    - **input:** ``global_feats`` (B, D), ``local_feats`` (B, P, D), ``label_emb`` (C, D);
      all are L2-normalised inside (idempotent) and moved to the head's device and dtype
    - **output:** ``logits`` (B, C); with ``return_extras=True`` also a dict with
      ``label_feats`` F (B, C, D), ``label_graph_feats`` T_g (C, D), ``recon`` R (B, P, D),
      ``local`` s_l (B, C), ``global`` s_g (B, C), ``graph`` (a LabelGraph), ``scale``
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import CheckpointError, ConfigError, DataError, UsageError
from sigrl.modules.gmc import GMC, GNNS, GRAPHS, LabelGraph, build_graph
from sigrl.modules.matching import MODES, global_scores, local_scores
from sigrl.modules.svfr import SVFR

COMBINES = ("softmax", "mean")
SCORE_WITH = ("text", "graph")
MAX_LOGIT_SCALE = 100.0


# ----------------------------------------------------------------------------- shared
def combine_scores(s_l: torch.Tensor | None, s_g: torch.Tensor | None, scale: torch.Tensor | float,
                   *, mode: str = "local+global", combine: str = "softmax") -> torch.Tensor:
    """Turn the local and global cosine scores (B, C) into logits (B, C).

    combine="softmax": ``log((softmax_C(scale s_l) + softmax_C(scale s_g)) / 2)`` (one
    part alone: its ``log_softmax``); combine="mean": ``scale (s_l + s_g) / 2``.
    """
    if mode == "global":
        parts = [s_g]
    elif mode == "local":
        parts = [s_l]
    else:
        parts = [s_l, s_g]
    if combine == "mean":
        return scale * sum(parts) / len(parts)
    logps = [torch.log_softmax(scale * s, dim=-1) for s in parts]
    if len(logps) == 1:
        return logps[0]
    return torch.logaddexp(logps[0], logps[1]) - math.log(2.0)


def check_features(who: str, embed_dim: int, global_feats, local_feats, label_emb, *, need_local: bool):
    """Validate the shapes of a head's inputs (raises UsageError naming the input)."""
    if not isinstance(global_feats, torch.Tensor) or global_feats.dim() != 2:
        raise UsageError(f"{who}: global_feats must be a (B, D) tensor, got {_shape(global_feats)}")
    B, D = global_feats.shape
    if D != embed_dim:
        raise UsageError(f"{who}: global_feats has width {D} but the head was built for embed_dim={embed_dim}")
    if not isinstance(label_emb, torch.Tensor) or label_emb.dim() != 2 or label_emb.shape[1] != D:
        raise UsageError(f"{who}: label_emb must be a (C, {D}) tensor, got {_shape(label_emb)}")
    if label_emb.shape[0] < 1:
        raise UsageError(f"{who}: label_emb is empty; pass at least one label")
    if local_feats is None:
        if need_local:
            raise UsageError(f"{who}: local_feats (B, P, D) are needed unless mode='global'")
        return
    if (not isinstance(local_feats, torch.Tensor) or local_feats.dim() != 3 or local_feats.shape[0] != B
            or local_feats.shape[2] != D or local_feats.shape[1] < 1):
        raise UsageError(f"{who}: local_feats must be a ({B}, P, {D}) tensor, got {_shape(local_feats)}")


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


class LogitScale(nn.Module):
    """The scale applied to cosine scores: fixed (a float in the config, no tensor) or
    learnable (parameter ``log_scale``, the scale clamped to at most 100 as in CLIP so a
    margin loss cannot win by inflating it)."""

    def __init__(self, init: float = 100.0, learn: bool = False):
        super().__init__()
        if not (init > 0 and math.isfinite(init)):
            raise ConfigError(f"logit_scale must be a positive number, got {init}")
        self.init = float(init)
        self.learn = bool(learn)
        if self.learn:
            self.log_scale = nn.Parameter(torch.tensor(math.log(self.init)))

    def forward(self) -> torch.Tensor | float:
        if self.learn:
            return self.log_scale.exp().clamp(max=max(MAX_LOGIT_SCALE, self.init))
        return self.init


class LogitBias(nn.Module):
    """An optional learnable scalar added to every logit (None: no bias, no parameter).

    It shifts all labels of all images alike, so every ranking (per image and per label,
    hence mAP and top-k) is unchanged; what it changes is the sigmoid a BCE-type loss puts
    on the logits. With ``combine="softmax"`` the logits are log-probabilities (<= 0), so
    sigmoid(logit) <= 0.5 and a positive can never be fitted; a bias lets it. Like
    SigLIP's learnable logit bias."""

    def __init__(self, init: float | None = None):
        super().__init__()
        if init is not None and not math.isfinite(float(init)):
            raise ConfigError(f"logit_bias must be a finite number or null, got {init!r}")
        self.init = None if init is None else float(init)
        self.bias = nn.Parameter(torch.tensor(self.init)) if self.init is not None else None

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.bias is None else logits + self.bias


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _name_key(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


class _ConfigMixin:
    """``config`` (JSON-able dict) and ``from_config``: ``cls.from_config(head.config)``
    builds the same architecture; ``load_state_dict`` then restores the weights."""

    _CONFIG_KEYS: tuple[str, ...] = ()

    # config values that live on the LogitScale sub-module ``self.scale``
    @property
    def logit_scale(self) -> float:
        return self.scale.init

    @property
    def learn_logit_scale(self) -> bool:
        return self.scale.learn

    @property
    def logit_bias(self) -> float | None:
        return self.bias.init

    @property
    def config(self) -> dict[str, Any]:
        cfg = {"type": type(self).__name__}
        cfg.update({k: getattr(self, k) for k in self._CONFIG_KEYS})
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        if not isinstance(config, dict):
            raise ConfigError(f"{cls.__name__}.from_config needs a dict, got {type(config).__name__}")
        cfg = dict(config)
        kind = cfg.pop("type", cls.__name__)
        if kind != cls.__name__:
            raise ConfigError(f"config is for {kind!r}, not {cls.__name__}; use sigrl.modules.head.head_from_config")
        unknown = sorted(set(cfg) - set(cls._CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"{cls.__name__} config has unknown key(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(cls._CONFIG_KEYS)}")
        if "embed_dim" not in cfg:
            raise ConfigError(f"{cls.__name__} config needs 'embed_dim'")
        dim = cfg.pop("embed_dim")
        return cls(dim, **cfg)


def head_from_config(config: dict[str, Any]) -> nn.Module:
    """Build a SigRLHead or AdapterHead from its ``config`` (dispatch on ``config["type"]``)."""
    from sigrl.modules.adapter import AdapterHead

    heads = {"SigRLHead": SigRLHead, "AdapterHead": AdapterHead}
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in heads:
        raise ConfigError(f"head config 'type' must be one of {', '.join(heads)}, got {kind!r}")
    return heads[kind].from_config(config)


# ------------------------------------------------------------------------------- head
class SigRLHead(_ConfigMixin, nn.Module):
    """GMC + SVFR + local/global matching on frozen features (formulas in the module docstring).

    Args:
        embed_dim: D, the joint embedding width.
        gnn: "gcn" or "gatv2" (message-passing layers of GMC).
        graph: "complete", "knn" or "cooc" (label graph built at every call).
        knn: k of the k-NN graph, and of the text-similarity attachment of unseen labels
            in the co-occurrence graph.
        top_k: patches averaged in the local score (16 in the reference).
        chunk_size: labels per chunk in SVFR (None: chosen from the shapes).
        mode: "local+global", "global" or "local".
        hidden, heads: GMC hidden width and GATv2 heads.
        dense: GMC path, "auto", True or False (see :class:`~sigrl.modules.gmc.GMC`).
        cooc_threshold: co-occurrence edges with weight at or below this are dropped.
        logit_scale: initial (or fixed) scale of the cosine scores (1 / temperature).
        learn_logit_scale: make the scale a parameter (clamped to at most 100).
        logit_bias: None (default) or the initial value of a learnable scalar added to
            every logit (:class:`LogitBias`; rankings unchanged, lets BCE-type losses fit).
        score_with: "text" (score with T, default) or "graph" (score with T_g).
        combine: "softmax" (log of DESIGN.md's score) or "mean" (raw scaled cosines).
        naive: SVFR by the plain formulas (memory B*P*C*D; for tests and benchmarks).
        label_prior_names: names of a stored label prior (set by :meth:`set_label_prior`;
            given here only by :meth:`from_config`, which then expects the prior
            tensors from ``load_state_dict``).
    """

    _CONFIG_KEYS = ("embed_dim", "gnn", "graph", "knn", "top_k", "chunk_size", "mode", "hidden", "heads",
                    "dense", "cooc_threshold", "logit_scale", "learn_logit_scale", "logit_bias", "score_with",
                    "combine",
                    "naive", "label_prior_names")

    def __init__(
        self,
        embed_dim: int,
        *,
        gnn: str = "gatv2",
        graph: str = "knn",
        knn: int = 8,
        top_k: int = 16,
        chunk_size: int | None = None,
        mode: str = "local+global",
        hidden: int = 128,
        heads: int = 4,
        dense: bool | str = "auto",
        cooc_threshold: float = 0.0,
        logit_scale: float = 100.0,
        learn_logit_scale: bool = False,
        logit_bias: float | None = None,
        score_with: str = "text",
        combine: str = "softmax",
        naive: bool = False,
        label_prior_names: list[str] | None = None,
    ):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ConfigError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        _check_choice("gnn", gnn, GNNS)
        _check_choice("graph", graph, GRAPHS)
        _check_choice("mode", mode, MODES)
        _check_choice("score_with", score_with, SCORE_WITH)
        _check_choice("combine", combine, COMBINES)
        for name, v in (("knn", knn), ("top_k", top_k), ("hidden", hidden), ("heads", heads)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ConfigError(f"chunk_size must be a positive integer or null, got {chunk_size!r}")
        if gnn == "gatv2" and hidden % heads:
            raise ConfigError(f"hidden={hidden} must be divisible by heads={heads} for gnn='gatv2'")
        self.embed_dim, self.gnn, self.graph = embed_dim, gnn, graph
        self.knn, self.top_k, self.chunk_size, self.mode = knn, top_k, chunk_size, mode
        self.hidden, self.heads, self.dense = hidden, heads, dense
        self.cooc_threshold = float(cooc_threshold)
        self.score_with, self.combine, self.naive = score_with, combine, bool(naive)
        self.scale = LogitScale(logit_scale, learn_logit_scale)
        self.bias = LogitBias(logit_bias)
        self.gmc = GMC(embed_dim, gnn=gnn, hidden=hidden, heads=heads, dense=dense)
        self.svfr = SVFR(embed_dim, chunk_size=chunk_size, naive=naive)
        self.label_prior_names: list[str] | None = None
        self._prior_index: dict[str, int] = {}
        self.register_buffer("prior_counts", None)
        self.register_buffer("prior_label_counts", None)
        if label_prior_names is not None:
            n = len(label_prior_names)
            self.set_label_prior(label_prior_names, torch.zeros(n, n), torch.zeros(n))


    # ------------------------------------------------------------------ label prior
    def set_label_prior(self, names: list[str], counts, label_counts) -> None:
        """Store training co-occurrence statistics for ``graph="cooc"``.

        Args:
            names: the C' label names the counts refer to (matched to ``label_names`` at
                forward time, case- and space-insensitively).
            counts: (C', C') number of training images holding labels i and j.
            label_counts: (C',) number of training images holding label i (0: unseen).
        """
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise DataError("set_label_prior: names must be a list of strings")
        names = list(names)
        keys = [_name_key(n) for n in names]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise DataError(f"set_label_prior: duplicate label names {dup[:5]}; give each label once")
        counts = torch.as_tensor(counts, dtype=torch.float32)
        label_counts = torch.as_tensor(label_counts, dtype=torch.float32)
        n = len(names)
        if counts.shape != (n, n) or label_counts.shape != (n,):
            raise DataError(f"set_label_prior: for {n} names counts must be ({n}, {n}) and label_counts ({n},), "
                            f"got {tuple(counts.shape)} and {tuple(label_counts.shape)}")
        if bool((counts < 0).any()) or bool((label_counts < 0).any()) or not bool(torch.isfinite(counts).all()):
            raise DataError("set_label_prior: counts must be finite and non-negative")
        device = next(self.parameters()).device
        self.label_prior_names = names
        self._prior_index = {k: i for i, k in enumerate(keys)}
        self.prior_counts = counts.to(device)
        self.prior_label_counts = label_counts.to(device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The prior buffers are sized by the prior's label count: take the stored shape.
        for name in ("prior_counts", "prior_label_counts"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self._device(), dtype=torch.float32))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _aligned_prior(self, label_names, C: int, device):
        if self.prior_counts is None or self.label_prior_names is None:
            raise UsageError("graph='cooc' needs a label prior: call head.set_label_prior(names, counts, label_counts)")
        if self.prior_counts.shape[0] != len(self.label_prior_names):
            raise CheckpointError(f"the label prior holds {self.prior_counts.shape[0]} labels but the config names "
                                  f"{len(self.label_prior_names)}; load a matching config and state dict")
        if label_names is None:
            raise UsageError("graph='cooc' needs label_names=[...] in forward to match the labels to the prior")
        if len(label_names) != C:
            raise UsageError(f"label_names has {len(label_names)} names but label_emb has {C} rows")
        n = len(self.label_prior_names)
        idx = torch.tensor([self._prior_index.get(_name_key(x), n) for x in label_names], device=device)
        counts = Fn.pad(self.prior_counts.to(device), (0, 1, 0, 1))  # row/col n: zeros (not in the prior)
        label_counts = Fn.pad(self.prior_label_counts.to(device), (0, 1))
        return counts[idx][:, idx], label_counts[idx]

    def label_graph(self, label_emb: torch.Tensor, label_names: list[str] | None = None) -> LabelGraph:
        """The graph this head uses over the labels ``label_emb`` (C, D)."""
        counts = label_counts = None
        if self.graph == "cooc":
            counts, label_counts = self._aligned_prior(label_names, label_emb.shape[0], label_emb.device)
        return build_graph(self.graph, label_emb, k=self.knn, counts=counts, label_counts=label_counts,
                           threshold=self.cooc_threshold)

    # ---------------------------------------------------------------------- forward
    def forward(
        self,
        global_feats: torch.Tensor,
        local_feats: torch.Tensor | None,
        label_emb: torch.Tensor,
        *,
        label_names: list[str] | None = None,
        return_extras: bool = False,
    ):
        check_features("SigRLHead", self.embed_dim, global_feats, local_feats, label_emb,
                       need_local=self.mode != "global" or return_extras)
        w = self.svfr.fuse_proj.weight
        g = Fn.normalize(global_feats.to(device=w.device, dtype=w.dtype), dim=-1)
        T = Fn.normalize(label_emb.to(device=w.device, dtype=w.dtype), dim=-1)
        need_svfr = self.mode != "global" or return_extras
        graph = T_g = R = F = s_l = None
        if need_svfr or self.score_with == "graph":
            graph = self.label_graph(T, label_names)
            T_g = self.gmc(T, graph)
        anchors = T if self.score_with == "text" else T_g
        if need_svfr:
            L = Fn.normalize(local_feats.to(device=w.device, dtype=w.dtype), dim=-1)
            R, F = self.svfr(L, T, T_g)
            s_l = local_scores(Fn.normalize(R, dim=-1), anchors, self.top_k)
        s_g = global_scores(g, anchors)
        scale = self.scale()
        logits = self.bias(combine_scores(s_l, s_g, scale, mode=self.mode, combine=self.combine))
        if not return_extras:
            return logits
        extras = {"label_feats": F, "label_graph_feats": T_g, "recon": R, "local": s_l, "global": s_g,
                  "graph": graph, "scale": scale}
        return logits, extras
