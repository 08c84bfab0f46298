"""The label graphs (docs/design.md §3, GMC) against plain Python loops over labels:
k-NN, co-occurrence with text attachment of unseen labels, the complete graph, and the
sparse transposed adjacency the GCN multiplies with. Expected values are written from the
definitions, never by calling the builders twice."""
import math

import pytest
import torch

from sigrl.errors import DataError, UsageError
from sigrl.modules.gmc import build_graph, complete_graph, cooc_graph, knn_graph


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _emb(C, D=5, seed=0):
    return torch.randn(C, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ref_knn(T, k):
    C = len(T)
    k = min(k, C - 1)
    chose = [[False] * C for _ in range(C)]
    for i in range(C):
        others = sorted((j for j in range(C) if j != i), key=lambda j: -_cos(T[i], T[j]))
        for j in others[:k]:
            chose[i][j] = True
    return [[1.0 if (chose[i][j] or chose[j][i]) else 0.0 for j in range(C)] for i in range(C)]


def ref_cooc(T, counts, label_counts, k, threshold):
    C = len(T)
    seen = [n > 0 for n in label_counts]
    adj = [[0.0] * C for _ in range(C)]
    for i in range(C):
        for j in range(C):
            if i != j and seen[i] and seen[j]:
                w = (counts[i][j] / label_counts[i] + counts[j][i] / label_counts[j]) / 2
                adj[i][j] = w if w > threshold else 0.0
    seen_ids = [j for j in range(C) if seen[j]]
    for u in (i for i in range(C) if not seen[i]):
        best = sorted(seen_ids, key=lambda j: -_cos(T[u], T[j]))[:min(k, len(seen_ids))]
        for j in best:
            w = min(max(_cos(T[u], T[j]), 1e-3), 1.0)
            adj[u][j] = adj[j][u] = w
    return adj


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3, 9])
def test_knn_graph_is_the_definition(seed, k):
    T = _emb(7, seed=seed)
    g = knn_graph(T, k)
    assert g.kind == "knn"
    assert g.adj.tolist() == ref_knn(T.tolist(), k)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k,threshold", [(1, 0.0), (2, 0.0), (3, 0.2), (8, 0.35)])
def test_cooc_graph_is_the_definition(seed, k, threshold):
    C = 8
    g = torch.Generator().manual_seed(10 + seed)
    T = _emb(C, seed=seed)
    label_counts = torch.randint(2, 9, (C,), generator=g).double()
    label_counts[[1, 4, 6]] = 0  # three unseen labels: text attachment
    counts = torch.zeros(C, C, dtype=torch.float64)
    for i in range(C):
        for j in range(i + 1, C):
            if label_counts[i] > 0 and label_counts[j] > 0:
                counts[i, j] = counts[j, i] = torch.randint(0, int(min(label_counts[i], label_counts[j])) + 1, (1,),
                                                            generator=g).item()
    got = cooc_graph(T, counts, label_counts, k=k, threshold=threshold)
    want = ref_cooc(T.tolist(), counts.tolist(), label_counts.tolist(), k, threshold)
    assert got.kind == "cooc"
    torch.testing.assert_close(got.adj.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)
    assert got.is_symmetric and float(got.adj.diagonal().abs().sum()) == 0.0


def test_cooc_threshold_is_strict_and_attachment_weights_are_clamped():
    # labels 0, 1 seen with n_01 = 1 of n = 2 each: weight exactly 0.5; a threshold of 0.5 drops it
    T = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # label 2 unseen, cosine -1 / 0 to the seen ones
    counts = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    n = torch.tensor([2.0, 2.0, 0.0])
    assert cooc_graph(T, counts, n, k=2, threshold=0.49).adj[0, 1].item() == 0.5
    g = cooc_graph(T, counts, n, k=2, threshold=0.5)
    assert g.adj[0, 1].item() == 0.0
    # the unseen label attaches to both seen labels with its cosine clamped into [1e-3, 1]
    assert g.adj[2, 0].item() == pytest.approx(1e-3) and g.adj[2, 1].item() == pytest.approx(1e-3)
    assert g.adj[0, 2].item() == pytest.approx(1e-3)
    # the same label as a near-copy of label 0: cosine above 1 by rounding is clamped to 1
    T2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert cooc_graph(T2, counts, n, k=1).adj[2, 0].item() == 1.0


def test_cooc_without_seen_labels_is_the_knn_graph_named_cooc():
    T = _emb(5, seed=4)
    g = cooc_graph(T, torch.zeros(5, 5), torch.zeros(5), k=2)
    assert g.kind == "cooc" and g.adj.tolist() == ref_knn(T.tolist(), 2)


def test_cooc_errors_name_the_builder():
    T = _emb(3)
    with pytest.raises(DataError, match=r"cooc_graph: counts must be \(3, 3\) and label_counts \(3,\)"):
        cooc_graph(T, torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(DataError, match="cooc_graph: co-occurrence counts must be non-negative"):
        cooc_graph(T, torch.zeros(3, 3), -torch.ones(3))
    with pytest.raises(UsageError, match="cooc_graph: label embeddings must be a non-empty"):
        cooc_graph(torch.zeros(0, 4), torch.zeros(0, 0), torch.zeros(0))
    with pytest.raises(UsageError, match="knn_graph: k must be a positive integer"):
        knn_graph(T, 0)


def test_complete_graph_and_build_graph_dispatch():
    g = complete_graph(4)
    assert g.kind == "complete" and g.adj.tolist() == [[float(i != j) for j in range(4)] for i in range(4)]
    assert g.num_edges == 12 and g.density == pytest.approx(12 / 16)
    T = _emb(6, seed=3)
    assert build_graph("complete", T).adj.tolist() == complete_graph(6).adj.tolist()
    assert build_graph("knn", T, k=2).adj.tolist() == ref_knn(T.tolist(), 2)
    n = torch.tensor([3.0, 0, 2, 2, 0, 1])
    counts = torch.ones(6, 6)
    want = ref_cooc(T.tolist(), counts.tolist(), n.tolist(), 2, 0.1)
    torch.testing.assert_close(build_graph("cooc", T, k=2, counts=counts, label_counts=n, threshold=0.1).adj,
                               torch.tensor(want, dtype=torch.float32))
    with pytest.raises(UsageError):
        build_graph("cooc", T)
    with pytest.raises((UsageError, ValueError)):
        build_graph("ring", T)


def test_sparse_transposed_adjacency_holds_target_source_weights():
    adj = torch.tensor([[0.0, 2.0, 0.0], [0.5, 0.0, 3.0], [0.0, 0.0, 0.0]])
    from sigrl.modules.gmc import LabelGraph

    g = LabelGraph(adj)
    dense = g.adj_t_sparse(dtype=torch.float64).to_dense()
    assert dense.dtype == torch.float64
    assert dense.tolist() == [[adj[j][i].item() for j in range(3)] for i in range(3)]
    assert g.edge_index.tolist() == [[0, 1, 1], [1, 0, 2]] and g.edge_weight.tolist() == [2.0, 0.5, 3.0]
    assert g.to(dtype=torch.float64).adj.dtype == torch.float64 and not g.is_symmetric
