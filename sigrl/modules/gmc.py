"""GMC: graph-based multi-label correlation (SigRL, ICME 2025; docs/design.md §3).

The labels are the nodes of a graph whose node features are the label embeddings
``T``. Two message-passing layers refine them, with a residual::

    T_g = normalize(T + GNN(T))          GNN = layer2(act(layer1(T)))   (+ a linear map for GATv2)

The graph is built explicitly for the label set of the call:

- :func:`complete_graph`: every label linked to every other label (the reference setting);
- :func:`knn_graph`: each label linked to its ``k`` most text-similar labels (cosine of
  ``T``), symmetrised (an edge if either end chose the other);
- :func:`cooc_graph`: training co-occurrence counts for the labels that have them (seen
  labels), edge weight ``(P(j|i) + P(i|j)) / 2 = (n_ij / n_i + n_ij / n_j) / 2``; labels
  without counts (unseen ones) attach to their ``k`` most text-similar labels among the
  seen ones, edge weight = their text cosine similarity (clamped to [1e-3, 1]).

Every builder returns a :class:`LabelGraph`, which holds the dense adjacency
``adj`` (C, C) (``adj[i, j]`` = weight of the edge i -> j, PyG's ``to_dense_adj``
convention; zero diagonal) and gives the PyG ``edge_index`` (2, E) / ``edge_weight`` (E,).
All builders produce symmetric graphs.

Layers (PyG):
    - ``gnn="gcn"``: :class:`torch_geometric.nn.GCNConv` (sparse) and, on dense graphs,
      PyG's :class:`torch_geometric.nn.DenseGCNConv` forward run on the *same* parameters
      (the two classes have the same parameter layout), so both paths give one result.
      Uses edge weights.
    - ``gnn="gatv2"``: :class:`torch_geometric.nn.GATv2Conv` (sparse). PyG 2.8 has no dense
      GATv2 layer (``DenseGATConv`` is GAT v1, static attention, other parameters), so the
      dense path is :func:`dense_gatv2`, written here on the GATv2Conv's own parameters
      (``lin_l``, ``lin_r``, ``att``, ``bias``), computed in blocks of target labels.
      GATv2 uses the graph's structure only, not its edge weights.
    Both layers add self-loops. The sparse GCN path hands PyG the transposed adjacency
    as a ``torch.sparse_csr`` tensor (sparse-dense product; quicker than ``edge_index``
    scatter on CPU, same result). The dense path is taken when the graph's density (edges
    / C^2) is at least ``dense_threshold`` (the complete graph always).

Cost (``benchmarks/bench_gmc.py``, C=1006, D=512, one CPU thread of a shared 2-core
machine, forward): GCN 49 ms dense / 580 ms sparse on the complete graph, 12 ms sparse
on the k-NN graph; GATv2 25 ms sparse on the k-NN graph but 0.55 s dense on the
complete graph (about 3 s per layer with backward): GATv2 attention is O(C^2 x hidden)
on a dense graph whatever the implementation. On CPU prefer ``graph="knn"`` with GATv2
(the head's default) or GCN for dense graphs. Note that GCN on the unweighted complete
graph sends every label the same message (the mean of all labels): use it with the
k-NN or co-occurrence graph, or use GATv2.

Widths: GCN is D -> hidden -> D. GATv2 attention costs C^2 x width per layer, so both
GATv2 layers are ``hidden`` wide (``heads`` heads of ``hidden // heads`` channels,
concatenated) and a bias-free linear map brings the result back to D. The last map
starts at zero, so an untrained GMC returns ``T`` exactly (``zero_init=False`` to turn
this off).

Two label-graph modules:

- :class:`ReferenceGMC` is the reference's (MVL-Lab/SigRL ``OV/models/clip_vit.py``,
  ``GATv2_1`` = ``models/graphs/gatv2/experiment.py`` ``GATv2``, a labml GATv2 with
  ``share_weights=True``)::

      h   = elu(GATv2_4heads(dropout(T)))       4 heads x 32 channels = hidden 128, concatenated
      T_g = GATv2_1head(dropout(h))             one head, hidden -> D (the "back to D" layer)

  source and target weights shared (``W_l = W_r``), no biases, dropout 0.3 on the input,
  between the layers and on the attention coefficients, complete graph with self-loops,
  no residual, no normalisation of ``T_g``. Built on PyG ``GATv2Conv(share_weights=True,
  bias=False)``, which computes the labml layer's formula.
- :class:`GMC` is ours: two GATv2 (separate source/target weights) or GCN layers of
  width ``hidden``, a zero-initialised linear map back to D and a residual,
  ``T_g = normalize(T + GNN(T))``, on any explicit graph (k-NN by default in the head).

Inductive and permutation-equivariant: no parameter depends on the number of labels C,
any label set works at any call, and permuting the labels (with their graph) permutes
the output rows.

Shapes:
    - **input:** label embeddings ``T`` (C, D), a :class:`LabelGraph` over C nodes
    - **output:** ``T_g`` (C, D), rows L2-normalised
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as Fn
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.nn import DenseGCNConv, GATv2Conv, GCNConv

from sigrl.errors import DataError, UsageError

GNNS = ("gcn", "gatv2")
GRAPHS = ("complete", "knn", "cooc")


# ------------------------------------------------------------------------------ graphs
@dataclass
class LabelGraph:
    """A graph over C labels.

    Attributes:
        adj: (C, C) non-negative edge weights, ``adj[i, j]`` for the edge i -> j, zero
            diagonal (self-loops are added by the layers).
        kind: which builder made it ("complete", "knn", "cooc" or "custom").
    """

    adj: torch.Tensor
    kind: str = "custom"
    _sparse: tuple | None = field(default=None, repr=False, compare=False)
    _csr: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def num_nodes(self) -> int:
        return self.adj.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def density(self) -> float:
        """Edges / C^2 (1 - 1/C for the complete graph)."""
        C = self.num_nodes
        return float(self.num_edges) / max(1, C * C)

    def _coo(self):
        if self._sparse is None:
            ei = self.adj.nonzero().t().contiguous()
            self._sparse = (ei, self.adj[ei[0], ei[1]])
        return self._sparse

    @property
    def edge_index(self) -> torch.Tensor:
        """(2, E) long: row 0 the source label, row 1 the target label."""
        return self._coo()[0]

    @property
    def edge_weight(self) -> torch.Tensor:
        """(E,) the weight of each edge in ``edge_index``."""
        return self._coo()[1]

    def adj_t_sparse(self, device=None, dtype=None) -> torch.Tensor:
        """The transposed adjacency as a ``torch.sparse_csr`` tensor (``[target, source]``),
        the form PyG's GCNConv multiplies with (faster than ``edge_index`` scatter on CPU)."""
        key = (str(device), dtype)
        if self._csr is None or self._csr[0] != key:
            ei, w = self._coo()
            ei, w = ei.to(device), w.to(device=device, dtype=dtype)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                coo = torch.sparse_coo_tensor(ei.flip(0), w, (self.num_nodes,) * 2, check_invariants=False)
                csr = coo.coalesce().to_sparse_csr()
            self._csr = (key, csr)
        return self._csr[1]

    @property
    def is_symmetric(self) -> bool:
        return bool(torch.equal(self.adj, self.adj.t()))

    def to(self, device=None, dtype=None) -> "LabelGraph":
        return LabelGraph(self.adj.to(device=device, dtype=dtype), self.kind)


def _check_emb(label_emb: torch.Tensor, who: str) -> None:
    if label_emb.dim() != 2 or label_emb.shape[0] < 1:
        raise UsageError(f"{who}: label embeddings must be a non-empty (C, D) tensor, got shape {tuple(label_emb.shape)}")


def _text_similarity(label_emb: torch.Tensor) -> torch.Tensor:
    T = Fn.normalize(label_emb.detach().float(), dim=-1)
    return T @ T.t()


def complete_graph(num_labels: int, *, device=None, dtype=torch.float32) -> LabelGraph:
    """Every label linked to every other one, weight 1 (no self-loops)."""
    if num_labels < 1:
        raise UsageError(f"complete_graph: num_labels must be at least 1, got {num_labels}")
    adj = torch.ones(num_labels, num_labels, device=device, dtype=dtype)
    adj.fill_diagonal_(0)
    return LabelGraph(adj, "complete")


def knn_graph(label_emb: torch.Tensor, k: int = 8) -> LabelGraph:
    """Each label linked to its ``k`` nearest labels by text cosine similarity; an
    undirected edge (weight 1 both ways) when either end chose the other.

    label_emb: (C, D). ``k`` is clamped to C - 1 (then the graph is complete)."""
    _check_emb(label_emb, "knn_graph")
    if int(k) < 1:
        raise UsageError(f"knn_graph: k must be a positive integer, got {k}")
    C = label_emb.shape[0]
    adj = torch.zeros(C, C, device=label_emb.device, dtype=torch.float32)
    k = min(int(k), C - 1)
    if k > 0:
        sim = _text_similarity(label_emb)
        sim.fill_diagonal_(float("-inf"))
        nbr = sim.topk(k, dim=1).indices  # (C, k)
        adj.scatter_(1, nbr, 1.0)
        adj = torch.maximum(adj, adj.t())
    return LabelGraph(adj, "knn")


def cooc_graph(
    label_emb: torch.Tensor,
    counts: torch.Tensor,
    label_counts: torch.Tensor,
    *,
    k: int = 8,
    threshold: float = 0.0,
) -> LabelGraph:
    """Co-occurrence graph with text-similarity attachment of labels without counts.

    Args:
        label_emb: (C, D) label embeddings (for the attachment of unseen labels).
        counts: (C, C) ``counts[i, j]`` = number of training images with labels i and j
            (the diagonal is ignored).
        label_counts: (C,) number of training images with label i; 0 marks a label
            without counts (unseen), which attaches to its ``k`` most text-similar seen
            labels.
        threshold: keep seen-seen edges whose weight ``(n_ij/n_i + n_ij/n_j) / 2`` is
            above this value.
    Returns:
        a symmetric :class:`LabelGraph`. With no seen label at all it is the k-NN graph.
    """
    _check_emb(label_emb, "cooc_graph")
    C = label_emb.shape[0]
    counts = torch.as_tensor(counts, dtype=torch.float32, device=label_emb.device)
    label_counts = torch.as_tensor(label_counts, dtype=torch.float32, device=label_emb.device)
    if counts.shape != (C, C) or label_counts.shape != (C,):
        raise DataError(
            f"cooc_graph: counts must be ({C}, {C}) and label_counts ({C},) for {C} labels, "
            f"got {tuple(counts.shape)} and {tuple(label_counts.shape)}"
        )
    if bool((counts < 0).any()) or bool((label_counts < 0).any()):
        raise DataError("cooc_graph: co-occurrence counts must be non-negative")
    seen = label_counts > 0
    if not bool(seen.any()):
        g = knn_graph(label_emb, k)
        return LabelGraph(g.adj, "cooc")
    n = label_counts.clamp_min(1)
    cond = counts / n[:, None]  # P(j | i)
    adj = (cond + cond.t()) / 2
    adj = adj * (seen[:, None] & seen[None, :])
    adj.fill_diagonal_(0)
    adj = torch.where(adj > threshold, adj, torch.zeros_like(adj))
    unseen = (~seen).nonzero().flatten()
    k_att = min(int(k), int(seen.sum()))
    if unseen.numel() and k_att > 0:
        sim = _text_similarity(label_emb)[unseen]  # (U, C)
        sim[:, ~seen] = float("-inf")
        top = sim.topk(k_att, dim=1)
        w = top.values.clamp(1e-3, 1.0)
        rows = unseen[:, None].expand_as(top.indices)
        adj[rows, top.indices] = w
        adj[top.indices, rows] = w
    return LabelGraph(adj, "cooc")


def build_graph(kind: str, label_emb: torch.Tensor, *, k: int = 8, counts=None, label_counts=None,
                threshold: float = 0.0) -> LabelGraph:
    """Build the graph named ``kind`` ("complete", "knn" or "cooc") for ``label_emb`` (C, D)."""
    if kind == "complete":
        _check_emb(label_emb, "complete_graph")
        return complete_graph(label_emb.shape[0], device=label_emb.device)
    if kind == "knn":
        return knn_graph(label_emb, k)
    if kind == "cooc":
        if counts is None or label_counts is None:
            raise UsageError("graph='cooc' needs co-occurrence counts: call head.set_label_prior(names, counts, label_counts)")
        return cooc_graph(label_emb, counts, label_counts, k=k, threshold=threshold)
    raise UsageError(f"unknown graph kind {kind!r}; choose one of {', '.join(GRAPHS)}")


# ------------------------------------------------------------------------------ layers
def _dense_gatv2_block(conv: GATv2Conv, x_l, x_r_blk, mask_blk):
    """Targets of one block. x_l: (C, H, Ch) sources; x_r_blk: (c, H, Ch) targets;
    mask_blk: (c, C) bool, True where source j sends to target i -> (c, H, Ch)."""
    e = x_r_blk[:, None] + x_l[None, :]  # (c, C, H, Ch)
    if torch.is_grad_enabled():
        logits = (Fn.leaky_relu(e, conv.negative_slope) * conv.att).sum(dim=-1)  # (c, C, H)
    else:  # inference: in place, a third fewer passes over the (c, C, H, Ch) block
        Fn.leaky_relu_(e, conv.negative_slope)
        logits = e.mul_(conv.att).sum(dim=-1)
    logits = logits.masked_fill(~mask_blk[:, :, None], float("-inf"))
    alpha = torch.softmax(logits, dim=1)
    alpha = Fn.dropout(alpha, p=conv.dropout, training=conv.training)
    return torch.einsum("ijh,jhc->ihc", alpha, x_l)


def dense_gatv2(conv: GATv2Conv, x: torch.Tensor, adj: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
    """GATv2Conv's formula on a dense adjacency, with the conv's own parameters.

    ``out_i = mean or concat over heads of sum_j alpha_ij x_l[j] + bias``, where
    ``alpha_ij = softmax over j in N(i) + {i} of att . leaky_relu(x_r[i] + x_l[j])``,
    ``x_l = lin_l(x)``, ``x_r = lin_r(x)`` (the same map with ``share_weights``). Targets are processed ``block`` at a time
    (recomputed in backward) so memory is O(block * C * heads * channels); ``None`` picks
    blocks of about 2**20 numbers for inference and 2**22 with autograd (the fastest here).

    x: (C, F_in), adj: (C, C) with ``adj[j, i] > 0`` for an edge j -> i -> (C, F_out).
    """
    if conv.edge_dim is not None or conv.res is not None:
        raise UsageError("dense_gatv2 supports GATv2Conv without edge_dim or residual")
    C = x.shape[0]
    H, Ch = conv.heads, conv.out_channels
    x_l = conv.lin_l(x).view(C, H, Ch)
    x_r = conv.lin_r(x).view(C, H, Ch)
    mask = adj.t() > 0  # mask[i, j]: j -> i
    mask = mask | torch.eye(C, dtype=torch.bool, device=x.device)
    if block is None:  # measured here: small blocks stay in cache; autograd prefers fewer blocks
        budget = (1 << 22) if torch.is_grad_enabled() else (1 << 20)
        block = max(1, budget // max(1, C * H * Ch))
    outs = []
    for s in range(0, C, block):
        sl = slice(s, min(C, s + block))
        if torch.is_grad_enabled() and (x_l.requires_grad or x_r.requires_grad):
            o = checkpoint(_dense_gatv2_block, conv, x_l, x_r[sl], mask[sl], use_reentrant=False)
        else:
            o = _dense_gatv2_block(conv, x_l, x_r[sl], mask[sl])
        outs.append(o)
    out = torch.cat(outs, dim=0)
    out = out.reshape(C, H * Ch) if conv.concat else out.mean(dim=1)
    if conv.bias is not None:
        out = out + conv.bias
    return out


def _drop_shared_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "conv.lin_r.")]:
        del state_dict[key]


def _fill_shared_keys(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    src = prefix + "conv.lin_l."
    for key in [k for k in state_dict if k.startswith(src)]:
        state_dict.setdefault(prefix + "conv.lin_r." + key[len(src):], state_dict[key])


class GraphLayer(nn.Module):
    """One message-passing layer with a sparse and a dense path over the same parameters.

    Shapes:
        - **input:** node features (C, F_in), a :class:`LabelGraph`, ``dense`` flag
        - **output:** (C, F_out)
    """

    def __init__(self, kind: str, in_dim: int, out_dim: int, *, heads: int = 1, share_weights: bool = False,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.kind = kind
        if kind == "gcn":
            self.conv = GCNConv(in_dim, out_dim)
        elif kind == "gatv2":
            if out_dim % heads:
                raise UsageError(f"GATv2 layer width {out_dim} must be divisible by heads={heads}")
            self.conv = GATv2Conv(in_dim, out_dim // heads, heads=heads, concat=True, share_weights=share_weights,
                                  bias=bias, dropout=dropout)
            if share_weights:
                # lin_r IS lin_l: keep one copy in the state dict (safetensors refuses tensors
                # that share memory) and refill lin_r's keys from lin_l's when loading.
                self.register_state_dict_post_hook(_drop_shared_keys)
                self.register_load_state_dict_pre_hook(_fill_shared_keys)
        else:
            raise UsageError(f"unknown gnn {kind!r}; choose one of {', '.join(GNNS)}")

    def forward(self, x: torch.Tensor, graph: LabelGraph, dense: bool) -> torch.Tensor:
        adj = graph.adj.to(device=x.device, dtype=x.dtype)
        if self.kind == "gcn":
            if dense:
                # PyG's DenseGCNConv forward, run on this GCNConv's lin/bias (same layout).
                # DenseGCNConv aggregates out_i = sum_j a[i, j] x_j, so a = adj^T.
                return DenseGCNConv.forward(self.conv, x, adj.t()).squeeze(0)
            with warnings.catch_warnings():  # PyG's gcn_norm: "sparse invariant checks are disabled"
                warnings.simplefilter("ignore", UserWarning)
                return self.conv(x, graph.adj_t_sparse(x.device, x.dtype))
        if dense:
            return dense_gatv2(self.conv, x, adj)
        return self.conv(x, graph.edge_index.to(x.device))


class GMC(nn.Module):
    """Graph-based multi-label correlation: ``T_g = normalize(T + GNN(T))``.

    Args:
        embed_dim: D.
        gnn: "gcn" or "gatv2".
        hidden: width of the hidden layer (both GATv2 layers).
        heads: GATv2 attention heads (concatenated; ``hidden`` must be divisible by it).
        dense: "auto" (dense path when ``graph.density >= dense_threshold``), True or False.
        dense_threshold: density at which "auto" switches to the dense path.
        zero_init: start the last map at zero so that an untrained GMC returns T.

    Shapes:
        - **input:** ``T`` (C, D), a :class:`LabelGraph` with C nodes
        - **output:** ``T_g`` (C, D), rows L2-normalised
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        gnn: str = "gcn",
        hidden: int = 128,
        heads: int = 4,
        dense: bool | str = "auto",
        dense_threshold: float = 0.1,
        zero_init: bool = True,
    ):
        super().__init__()
        if gnn not in GNNS:
            raise UsageError(f"unknown gnn {gnn!r}; choose one of {', '.join(GNNS)}")
        if dense not in ("auto", True, False):
            raise UsageError(f"GMC: dense must be 'auto', True or False, got {dense!r}")
        self.gnn = gnn
        self.dense = dense
        self.dense_threshold = float(dense_threshold)
        if gnn == "gcn":
            self.layer1 = GraphLayer("gcn", embed_dim, hidden)
            self.layer2 = GraphLayer("gcn", hidden, embed_dim)
            self.out_proj = None
        else:
            self.layer1 = GraphLayer("gatv2", embed_dim, hidden, heads=heads)
            self.layer2 = GraphLayer("gatv2", hidden, hidden, heads=heads)
            self.out_proj = nn.Linear(hidden, embed_dim, bias=False)
        if zero_init:
            last = self.out_proj if self.out_proj is not None else self.layer2.conv.lin
            nn.init.zeros_(last.weight)

    def use_dense(self, graph: LabelGraph) -> bool:
        if self.dense == "auto":
            return graph.kind == "complete" or graph.density >= self.dense_threshold
        return bool(self.dense)

    def forward(self, T: torch.Tensor, graph: LabelGraph) -> torch.Tensor:
        if T.dim() != 2 or graph.num_nodes != T.shape[0]:
            raise UsageError(f"GMC: label embeddings {tuple(T.shape)} and a graph over {graph.num_nodes} labels do not match")
        dense = self.use_dense(graph)
        h = Fn.elu(self.layer1(T, graph, dense))
        h = self.layer2(h, graph, dense)
        if self.out_proj is not None:
            h = self.out_proj(h)
        return Fn.normalize(T + h, dim=-1)


class ReferenceGMC(nn.Module):
    """The reference SigRL label graph: a two-layer GATv2 with shared weights, no residual.

    ``T_g = GATv2_out(dropout(elu(GATv2_in(dropout(T)))))`` where ``GATv2_in`` has ``heads``
    heads of ``hidden // heads`` channels (concatenated, width ``hidden``) and
    ``GATv2_out`` one head of width D. In each layer, for target i and source j in
    N(i) + {i}::

        e_ij   = a . leaky_relu_0.2(W x_i + W x_j)        (per head; W shared by source and target)
        alpha  = softmax over j of e_ij,   dropout on alpha
        out_i  = sum_j alpha_ij W x_j                      (heads concatenated; no bias)

    Args:
        embed_dim: D.
        hidden: width of the first layer (all heads together; 128 in the reference).
        heads: heads of the first layer (4 in the reference).
        dropout: on the input, between the layers and on the attention (0.3).
        dense: "auto" (dense path on dense graphs), True or False, as in :class:`GMC`.

    Shapes:
        - **input:** ``T`` (C, D), a :class:`LabelGraph` over C nodes (the reference:
          the complete graph; self-loops are added by the layers)
        - **output:** ``T_g`` (C, D), not normalised
    """

    def __init__(self, embed_dim: int, *, hidden: int = 128, heads: int = 4, dropout: float = 0.3,
                 dense: bool | str = "auto", dense_threshold: float = 0.1):
        super().__init__()
        if dense not in ("auto", True, False):
            raise UsageError(f"ReferenceGMC: dense must be 'auto', True or False, got {dense!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise UsageError(f"ReferenceGMC: dropout must be in [0, 1), got {dropout!r}")
        self.dense, self.dense_threshold, self.dropout = dense, float(dense_threshold), float(dropout)
        kw = dict(share_weights=True, bias=False, dropout=self.dropout)
        self.layer1 = GraphLayer("gatv2", embed_dim, hidden, heads=heads, **kw)
        self.layer2 = GraphLayer("gatv2", hidden, embed_dim, heads=1, **kw)

    use_dense = GMC.use_dense

    def forward(self, T: torch.Tensor, graph: LabelGraph) -> torch.Tensor:
        if T.dim() != 2 or graph.num_nodes != T.shape[0]:
            raise UsageError(f"GMC: label embeddings {tuple(T.shape)} and a graph over {graph.num_nodes} labels do not match")
        dense = self.use_dense(graph)
        h = Fn.dropout(T, self.dropout, self.training)
        h = Fn.elu(self.layer1(h, graph, dense))
        h = Fn.dropout(h, self.dropout, self.training)
        return self.layer2(h, graph, dense)
