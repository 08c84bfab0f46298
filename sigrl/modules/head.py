"""The SigRL head: GMC + SVFR + local/global matching (docs/design.md §2-3).

On backbone features of a batch (the global embedding ``g`` and the *raw* projected patch
tokens ``L``, as :meth:`~sigrl.backbones.base.Backbone.encode_images` returns them) and
the embeddings ``T`` of any label set (``g`` and ``T`` are L2-normalised inside)::

    graph = the label graph of this call (complete, k-NN or co-occurrence)
    T_g   = GMC(T, graph)                                    graph-refined label embeddings
    R, F  = SVFR(L', T, T_g)                                 reconstructed tokens, label features
    s_l[b, c] = mean of the top-k over p of <R'_bp, T_c>     local score
    s_g[b, c] = <g_b, T_c>                                   global score
    logits    = combine(s_l, s_g)                            (sigrl.modules.scoring)

Two presets (``preset=``), each a complete recipe; the named options below override its
defaults where they are compatible with it:

``"reference"`` (default) -- what the reference forward computes (MVL-Lab/SigRL
``OV/models/clip_vit.py`` ``CLIPVIT.forward``): ``L' = L`` raw tokens into SVFR,
``R' = R`` raw into the top-16, ``combine="l2"``:
``logits = scale * (s_l/||s_l||_2 + s_g/||s_g||_2) / 2`` over the labels of each image,
scale 1 by default (logits in [-1, 1], the scores the reference trains with a margin-1
ranking loss), and GMC = :class:`~sigrl.modules.gmc.ReferenceGMC` (GATv2, shared
source/target weights, 4 heads x 32 channels concatenated, ELU, a one-head GATv2 layer
back to D, dropout 0.3, complete graph with self-loops, no residual).

``"ours"`` -- the toolkit's own variant: ``L' = L / ||L_p||`` and ``R' = R / ||R_p||``
(per-patch L2 normalisation, so every local score is a cosine),
``combine="softmax"``: ``logits = log((softmax_C(scale s_l) + softmax_C(scale s_g)) / 2)``
with scale 100 (log-probabilities over the labels, <= 0), GMC =
:class:`~sigrl.modules.gmc.GMC` (two GATv2 layers with separate weights, a zero-initialised
map back to D and a residual, ``T_g = normalize(T + GNN(T))``) on the k-NN label graph.
``combine="mean"`` gives raw ``scale * (s_l + s_g) / 2``.

``mode="global"`` / ``"local"`` keep one of the two parts.

Scores use the text embeddings ``T``, not ``T_g`` (``score_with="text"``, the default and
the reference's choice): R is a re-weighting of the frozen patch tokens, so it stays in
the CLIP joint space that T lives in, and T is the same anchor for seen and unseen
labels, whereas GMC is trained on seen labels only and could move the unseen anchors.
The graph still shapes every score through ``U = W2 [F'; T_g]`` in the reconstruction.
``score_with="graph"`` scores with ``T_g`` (L2-normalised for scoring).

The head never touches a backbone, works for any number of labels C at any call, and has
no parameter whose shape depends on C. The only C-sized tensors it may hold are the
label prior buffers (``prior_counts`` (C', C'), ``prior_label_counts`` (C',)) set by
:meth:`SigRLHead.set_label_prior` for ``graph="cooc"``; their label names go into
``head.config``, so ``SigRLHead.from_config(head.config)`` followed by
``load_state_dict`` rebuilds an identical head. A config without ``preset`` (written
before presets existed) is read as ``preset="ours"``, the behaviour it was saved with.

Shapes:
    - **input:** ``global_feats`` (B, D), ``local_feats`` (B, P, D) raw tokens,
      ``label_emb`` (C, D); moved to the head's device and dtype
    - **output:** ``logits`` (B, C); with ``return_extras=True`` also a dict with
      ``label_feats`` F (B, C, D), ``label_graph_feats`` T_g (C, D), ``recon`` R (B, P, D)
      (as used in the top-k: raw for "reference", normalised per patch for "ours"),
      ``local`` s_l (B, C), ``global`` s_g (B, C), ``graph`` (a LabelGraph), ``scale``
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import CheckpointError, ConfigError, DataError, UsageError
from sigrl.modules.gmc import GMC, GNNS, GRAPHS, LabelGraph, ReferenceGMC, build_graph
from sigrl.modules.matching import MODES, global_scores, local_scores
from sigrl.modules.scoring import (COMBINES, LogitBias, LogitScale, _check_choice, _ConfigMixin, check_features,
                                   combine_scores, default_logit_scale)
from sigrl.modules.svfr import SVFR

SCORE_WITH = ("text", "graph")
PRESETS = ("reference", "ours")
#: ablations (``ablate=[...]``; the head is then no longer SigRL): ``"graph"`` sets
#: T_g = T (no GMC, no label graph); ``"svfr"`` sets R = L (no reconstruction: the local
#: score is CLIP's top-k patch matching). ``mode="global"`` is the third one (local off).
ABLATIONS = ("graph", "svfr")
#: the defaults each preset gives to the options left as None
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "reference": {"gnn": "gatv2", "graph": "complete", "combine": "l2", "gmc_dropout": 0.3},
    "ours": {"gnn": "gatv2", "graph": "knn", "combine": "softmax", "gmc_dropout": 0.0},
}


def _name_key(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


# ------------------------------------------------------------------------------- head
class SigRLHead(_ConfigMixin, nn.Module):
    """GMC + SVFR + local/global matching on frozen features (formulas in the module docstring).

    Args:
        embed_dim: D, the joint embedding width.
        preset: "reference" (the reference SigRL forward, default) or "ours" (our
            variant); see the module docstring. Fixes the token normalisation and the GMC
            module, and gives the defaults of the options left as None.
        gnn: "gatv2" or "gcn" (message-passing layers of GMC; "gcn" only with preset "ours").
        graph: "complete", "knn" or "cooc" (label graph built at every call); default
            "complete" (reference) / "knn" (ours).
        knn: k of the k-NN graph, and of the text-similarity attachment of unseen labels
            in the co-occurrence graph.
        top_k: patches averaged in the local score (16 in the reference).
        chunk_size: labels per chunk in SVFR (None: chosen from the shapes).
        mode: "local+global", "global" or "local".
        hidden, heads: GMC hidden width and GATv2 heads (128 and 4: the reference).
        gmc_dropout: dropout of the reference GMC (default 0.3; must be 0 for "ours").
        dense: GMC path, "auto", True or False (see :class:`~sigrl.modules.gmc.GMC`).
        cooc_threshold: co-occurrence edges with weight at or below this are dropped.
        logit_scale: initial (or fixed) scale of the combined scores; default 1 for
            combine "l2", 100 otherwise (:func:`~sigrl.modules.scoring.default_logit_scale`).
        learn_logit_scale: make the scale a parameter (clamped to at most 100).
        logit_bias: None (default) or the initial value of a learnable scalar added to
            every logit (:class:`~sigrl.modules.scoring.LogitBias`; rankings unchanged,
            lets BCE-type losses fit).
        score_with: "text" (score with T, default) or "graph" (score with T_g).
        combine: "l2" (reference), "softmax" (ours) or "mean"; see
            :mod:`sigrl.modules.scoring`.
        naive: SVFR by the plain formulas (memory B*P*C*D; for tests and benchmarks).
        svfr_input_scale: s > 0; SVFR runs on ``s * L'`` and its outputs R and F are
            divided by s (default 1: the reference computation). Only the tanh inputs of
            SVFR steps 1 and 3 change: with per-patch normalised tokens they are ~1/D, so
            SVFR's attention starts uniform and leaves it slowly; s = sqrt(D) makes them
            ~1/sqrt(D). Not SigRL's computation when s != 1 (docs/fidelity.md).
        label_prior_names: names of a stored label prior (set by :meth:`set_label_prior`;
            given here only by :meth:`from_config`, which then expects the prior
            tensors from ``load_state_dict``).
    """

    _CONFIG_KEYS = ("embed_dim", "preset", "gnn", "graph", "knn", "top_k", "chunk_size", "mode", "hidden",
                    "heads", "gmc_dropout", "dense", "cooc_threshold", "logit_scale", "learn_logit_scale",
                    "logit_bias", "score_with", "combine", "naive", "label_prior_names", "ablate",
                    "svfr_input_scale")

    def __init__(
        self,
        embed_dim: int,
        *,
        preset: str = "reference",
        gnn: str | None = None,
        graph: str | None = None,
        knn: int = 8,
        top_k: int = 16,
        chunk_size: int | None = None,
        mode: str = "local+global",
        hidden: int = 128,
        heads: int = 4,
        gmc_dropout: float | None = None,
        dense: bool | str = "auto",
        cooc_threshold: float = 0.0,
        logit_scale: float | None = None,
        learn_logit_scale: bool = False,
        logit_bias: float | None = None,
        score_with: str = "text",
        combine: str | None = None,
        naive: bool = False,
        label_prior_names: list[str] | None = None,
        ablate: list[str] | tuple[str, ...] = (),
        svfr_input_scale: float = 1.0,
    ):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ConfigError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        _check_choice("preset", preset, PRESETS)
        defaults = PRESET_DEFAULTS[preset]
        gnn = defaults["gnn"] if gnn is None else gnn
        graph = defaults["graph"] if graph is None else graph
        combine = defaults["combine"] if combine is None else combine
        gmc_dropout = defaults["gmc_dropout"] if gmc_dropout is None else float(gmc_dropout)
        logit_scale = default_logit_scale(combine) if logit_scale is None else logit_scale
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
        if preset == "reference" and gnn != "gatv2":
            raise ConfigError("preset='reference' uses the reference GMC (GATv2 with shared weights); "
                              f"gnn={gnn!r} needs preset='ours'")
        if not 0.0 <= gmc_dropout < 1.0:
            raise ConfigError(f"gmc_dropout must be in [0, 1), got {gmc_dropout!r}")
        if preset == "ours" and gmc_dropout != 0.0:
            raise ConfigError("gmc_dropout applies to preset='reference' only (our GMC has no dropout)")
        if isinstance(svfr_input_scale, bool) or not isinstance(svfr_input_scale, (int, float)) \
                or not svfr_input_scale > 0:
            raise ConfigError(f"svfr_input_scale must be a positive number, got {svfr_input_scale!r}")
        #: SVFR runs on s * L and its outputs R, F are divided by s (1 = the reference)
        self.svfr_input_scale = float(svfr_input_scale)
        ablate = [ablate] if isinstance(ablate, str) else list(ablate)
        for part in ablate:
            _check_choice("ablate", part, ABLATIONS)
        #: parts switched off for ablation studies (not SigRL: see ABLATIONS)
        self.ablate = tuple(sorted(set(ablate)))
        self.embed_dim, self.preset, self.gnn, self.graph = embed_dim, preset, gnn, graph
        self.knn, self.top_k, self.chunk_size, self.mode = knn, top_k, chunk_size, mode
        self.hidden, self.heads, self.gmc_dropout, self.dense = hidden, heads, gmc_dropout, dense
        self.cooc_threshold = float(cooc_threshold)
        self.score_with, self.combine, self.naive = score_with, combine, bool(naive)
        #: whether local tokens and R are L2-normalised per patch ("ours") or used raw ("reference")
        self.normalize_tokens = preset == "ours"
        self.scale = LogitScale(logit_scale, learn_logit_scale)
        self.bias = LogitBias(logit_bias)
        if preset == "reference":
            self.gmc = ReferenceGMC(embed_dim, hidden=hidden, heads=heads, dropout=gmc_dropout, dense=dense)
        else:
            self.gmc = GMC(embed_dim, gnn=gnn, hidden=hidden, heads=heads, dense=dense)
        self.svfr = SVFR(embed_dim, chunk_size=chunk_size, naive=naive)
        self.label_prior_names: list[str] | None = None
        self._prior_index: dict[str, int] = {}
        self.register_buffer("prior_counts", None)
        self.register_buffer("prior_label_counts", None)
        if label_prior_names is not None:
            n = len(label_prior_names)
            self.set_label_prior(label_prior_names, torch.zeros(n, n), torch.zeros(n))

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """As :meth:`_ConfigMixin.from_config`; a config without ``preset`` was written
        before presets existed, by our variant: it is read as ``preset="ours"``."""
        if isinstance(config, dict) and "preset" not in config:
            config = {**config, "preset": "ours"}
        return super().from_config(config)

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
    def prepare_labels(self, label_emb: torch.Tensor, label_names: list[str] | None = None, *,
                       extras: bool = False) -> dict:
        """The label side of a call, which depends on the labels alone: ``T`` (C, D)
        normalised, the graph, ``T_g`` = GMC(T, graph) (C, D) and the scoring anchors.
        Computed once per label set by :meth:`sigrl.scorer.Scorer.prepare` (tagging, export);
        in eval mode ``score_prepared(g, L, prepare_labels(T))`` equals ``forward(g, L, T)``.
        ``extras``: build the graph side even where the scores do not need it (mode "global")."""
        w = self.svfr.fuse_proj.weight
        T = Fn.normalize(label_emb.to(device=w.device, dtype=w.dtype), dim=-1)
        graph = T_g = None
        if "graph" in self.ablate:
            T_g = T
        elif self.mode != "global" or self.score_with == "graph" or extras:
            graph = self.label_graph(T, label_names)
            T_g = self.gmc(T, graph)
        anchors = T if self.score_with == "text" else Fn.normalize(T_g, dim=-1)
        return {"T": T, "T_g": T_g, "graph": graph, "anchors": anchors}

    def score_prepared(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None, labels: dict, *,
                       return_extras: bool = False):
        """The image side: features (B, D), (B, P, D) and :meth:`prepare_labels`' dict -> logits (B, C)."""
        check_features("SigRLHead", self.embed_dim, global_feats, local_feats, labels["T"],
                       need_local=self.mode != "global" or return_extras)
        w = self.svfr.fuse_proj.weight
        g = Fn.normalize(global_feats.to(device=w.device, dtype=w.dtype), dim=-1)
        T, T_g, anchors = labels["T"], labels["T_g"], labels["anchors"]
        R = F = s_l = None
        if self.mode != "global" or return_extras:
            if T_g is None:
                raise UsageError("return_extras with mode='global' needs prepare_labels(..., extras=True)")
            L = local_feats.to(device=w.device, dtype=w.dtype)
            if self.normalize_tokens:
                L = Fn.normalize(L, dim=-1)
            if "svfr" in self.ablate:
                R, F = L, None
            else:  # on s * L, brought back to L's scale (svfr_input_scale; s = 1 is exact: the reference)
                s = self.svfr_input_scale
                R, F = self.svfr(L * s, T, T_g)
                R, F = R / s, F / s
            if self.normalize_tokens:
                R = Fn.normalize(R, dim=-1)
            s_l = local_scores(R, anchors, self.top_k)
        s_g = global_scores(g, anchors)
        scale = self.scale()
        logits = self.bias(combine_scores(s_l, s_g, scale, mode=self.mode, combine=self.combine))
        if not return_extras:
            return logits
        extras = {"label_feats": F, "label_graph_feats": T_g, "recon": R, "local": s_l, "global": s_g,
                  "graph": labels["graph"], "scale": scale}
        return logits, extras

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
        labels = self.prepare_labels(label_emb, label_names, extras=return_extras)
        return self.score_prepared(global_feats, local_feats, labels, return_extras=return_extras)
