import math

import pytest
import torch
import torch.nn.functional as Fn
from torch_geometric.nn import DenseGCNConv

from sigrl.errors import DataError, UsageError
from sigrl.modules.gmc import (
    GMC,
    GNNS,
    LabelGraph,
    build_graph,
    complete_graph,
    cooc_graph,
    dense_gatv2,
    knn_graph,
)

torch.set_num_threads(1)
DT = torch.float64


def _emb_at_angles(degrees):
    rad = torch.tensor(degrees, dtype=DT) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def _random_gmc(gnn, D=6, hidden=4, heads=2, seed=0):
    torch.manual_seed(seed)
    m = GMC(D, gnn=gnn, hidden=hidden, heads=heads, zero_init=False).double()
    with torch.no_grad():  # make every parameter (biases and attention too) non-trivial
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m


def _edges(graph):
    return {tuple(e) for e in graph.edge_index.t().tolist()}


# ------------------------------------------------------------------ graph builders
def test_complete_graph():
    g = complete_graph(4)
    assert torch.equal(g.adj, torch.ones(4, 4) - torch.eye(4))
    assert g.num_edges == 12 and g.is_symmetric
    assert g.density == pytest.approx(12 / 16)
    assert torch.equal(g.edge_weight, torch.ones(12))


def test_knn_graph_hand_worked():
    # angles 0, 10, 30, 90 degrees; k = 1: 0->1, 1->0, 2->1, 3->2; symmetrised: 0-1, 1-2, 2-3
    g = knn_graph(_emb_at_angles([0, 10, 30, 90]), k=1)
    assert _edges(g) == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    assert g.is_symmetric and float(g.adj.diagonal().abs().sum()) == 0.0
    # k >= C - 1: the complete graph
    assert torch.equal(knn_graph(_emb_at_angles([0, 10, 30]), k=5).adj, complete_graph(3).adj)
    # one label: no edges
    assert knn_graph(_emb_at_angles([0]), k=3).num_edges == 0


def test_cooc_graph_hand_worked():
    # labels 0..2 seen; label 3 unseen, text-closest to label 2
    counts = torch.tensor([[4, 2, 0, 0], [2, 4, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=DT)
    label_counts = torch.tensor([4, 4, 1, 0], dtype=DT)
    T = _emb_at_angles([0, 40, 80, 85])
    g = cooc_graph(T, counts, label_counts, k=1)
    # w01 = (2/4 + 2/4) / 2 = 0.5 ; w12 = (1/4 + 1/1) / 2 = 0.625 ; w02 = 0
    assert g.adj[0, 1].item() == pytest.approx(0.5) and g.adj[1, 0].item() == pytest.approx(0.5)
    assert g.adj[1, 2].item() == pytest.approx(0.625) and g.adj[2, 1].item() == pytest.approx(0.625)
    assert g.adj[0, 2].item() == 0.0
    # unseen label 3 attaches to label 2 with weight cos(5 degrees), both ways
    assert g.adj[3, 2].item() == pytest.approx(math.cos(math.radians(5)), rel=1e-6)
    assert g.adj[2, 3].item() == g.adj[3, 2].item()
    assert g.adj[3, :2].abs().sum().item() == 0.0
    assert g.is_symmetric
    # threshold drops the 0.5 edge, keeps 0.625
    g2 = cooc_graph(T, counts, label_counts, k=1, threshold=0.55)
    assert g2.adj[0, 1].item() == 0.0 and g2.adj[1, 2].item() == pytest.approx(0.625)


def test_cooc_graph_without_seen_labels_is_knn():
    T = _emb_at_angles([0, 10, 30, 90])
    g = cooc_graph(T, torch.zeros(4, 4), torch.zeros(4), k=1)
    assert torch.equal(g.adj, knn_graph(T, k=1).adj)


def test_graph_errors():
    T = _emb_at_angles([0, 10, 30])
    with pytest.raises(UsageError):
        knn_graph(T, k=0)
    with pytest.raises(DataError):
        cooc_graph(T, torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(DataError):
        cooc_graph(T, -torch.ones(3, 3), torch.ones(3))
    with pytest.raises(UsageError):
        build_graph("cooc", T)
    with pytest.raises(UsageError):
        build_graph("star", T)
    with pytest.raises(UsageError):
        knn_graph(torch.zeros(0, 2), k=1)


# --------------------------------------------------------------- layers and paths
def _asymmetric_graph(C=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    adj = (torch.rand(C, C, generator=g) < 0.35).to(DT) * (0.1 + torch.rand(C, C, generator=g, dtype=DT))
    adj.fill_diagonal_(0)
    return LabelGraph(adj)


@pytest.mark.parametrize("gnn", GNNS)
def test_dense_and_sparse_paths_agree_with_gradients(gnn):
    m = _random_gmc(gnn)
    graph = _asymmetric_graph()
    T = torch.randn(9, 6, dtype=DT, requires_grad=True)
    outs, grads = [], []
    for dense in (True, False):
        m.dense = dense
        out = m(T, graph)
        outs.append(out)
        grads.append(torch.autograd.grad(out.pow(3).sum(), [T, *m.parameters()]))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gcn_paths_equal_pyg_layers():
    """Our sparse (CSR) and dense GCN calls give what PyG's GCNConv(edge_index) and
    DenseGCNConv give with the same weights."""
    m = _random_gmc("gcn")
    layer = m.layer1
    graph = _asymmetric_graph()
    x = torch.randn(9, 6, dtype=DT)
    ref = layer.conv(x, graph.edge_index, graph.edge_weight)
    torch.testing.assert_close(layer(x, graph, dense=False), ref)
    dense = DenseGCNConv(6, 4).double()
    dense.load_state_dict({"lin.weight": layer.conv.lin.weight, "bias": layer.conv.bias})
    torch.testing.assert_close(dense(x, graph.adj.t()).squeeze(0), ref)


def test_dense_gatv2_equals_pyg_gatv2conv():
    m = _random_gmc("gatv2")
    conv = m.layer1.conv
    graph = _asymmetric_graph()
    x = torch.randn(9, 6, dtype=DT)
    ref = conv(x, graph.edge_index)
    for block in (1, 4, None):
        torch.testing.assert_close(dense_gatv2(conv, x, graph.adj, block=block), ref)
        with torch.no_grad():  # the in-place inference branch
            torch.testing.assert_close(dense_gatv2(conv, x, graph.adj, block=block), ref)


@pytest.mark.parametrize("gnn", GNNS)
@pytest.mark.parametrize("kind", ["complete", "knn", "cooc"])
def test_permuting_labels_permutes_outputs(gnn, kind):
    m = _random_gmc(gnn)
    C = 8
    g = torch.Generator().manual_seed(3)
    T = Fn.normalize(torch.randn(C, 6, generator=g, dtype=DT), dim=-1)
    counts = torch.randint(0, 5, (C, C), generator=g).to(DT)
    counts = counts + counts.t()
    label_counts = torch.randint(1, 9, (C,), generator=g).to(DT)
    label_counts[[2, 5]] = 0  # unseen
    perm = torch.randperm(C, generator=g)
    kw = dict(k=2, counts=counts, label_counts=label_counts)
    kw_p = dict(k=2, counts=counts[perm][:, perm], label_counts=label_counts[perm])
    out = m(T, build_graph(kind, T, **kw))
    out_p = m(T[perm], build_graph(kind, T[perm], **kw_p))
    torch.testing.assert_close(out_p, out[perm])


@pytest.mark.parametrize("gnn", GNNS)
def test_inductive_any_label_count(gnn):
    m = GMC(6, gnn=gnn, hidden=4, heads=2)
    shapes = {tuple(t.shape) for t in m.state_dict().values()}
    for C in (1, 3, 11):
        T = Fn.normalize(torch.randn(C, 6), dim=-1)
        out = m(T, knn_graph(T, k=2))
        assert out.shape == (C, 6)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(C))
    assert not any(11 in s for s in shapes)  # nothing sized by the label count


@pytest.mark.parametrize("gnn", GNNS)
def test_zero_init_returns_the_text_embeddings(gnn):
    m = GMC(6, gnn=gnn, hidden=4, heads=2)
    T = torch.randn(5, 6)
    torch.testing.assert_close(m(T, complete_graph(5)), Fn.normalize(T, dim=-1))
    # ... and still learns: the last map gets a gradient
    loss = (m(T, complete_graph(5)) * torch.randn(5, 6)).sum()
    loss.backward()
    last = m.out_proj if m.out_proj is not None else m.layer2.conv.lin
    assert last.weight.grad.abs().sum() > 0


def test_auto_dense_choice_and_errors():
    m = GMC(6, gnn="gcn", hidden=4)
    T = torch.randn(30, 6)
    assert m.use_dense(complete_graph(30))
    assert not m.use_dense(knn_graph(T, k=1))
    with pytest.raises(UsageError):
        GMC(6, gnn="gin")
    with pytest.raises(UsageError):
        GMC(6, dense="sometimes")
    with pytest.raises(UsageError):
        m(T, complete_graph(4))
