"""The reference GMC (labml GATv2 with shared weights, as MVL-Lab/SigRL uses it) against
an independent loop implementation of its formula, eval mode, random weights."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as Fn

from sigrl.modules.gmc import ReferenceGMC, complete_graph

torch.set_num_threads(1)


def loop_gatv2_layer(x, W, att, heads):
    """One GATv2 layer, shared source/target weight W (out, in), no bias, complete graph
    with self-loops: per head h, e_ij = sum_f att[h,f] leaky_relu(g_i + g_j)[h,f] with
    g = W x, alpha_i. = softmax over j, out_i = concat over h of sum_j alpha_ij g_j[h]."""
    C = x.shape[0]
    g = torch.stack([W @ x[i] for i in range(C)])  # (C, heads * ch)
    ch = g.shape[1] // heads
    out = torch.zeros(C, heads * ch, dtype=x.dtype)
    for h in range(heads):
        sl = slice(h * ch, (h + 1) * ch)
        for i in range(C):
            e = []
            for j in range(C):
                s = g[i, sl] + g[j, sl]
                s = torch.where(s > 0, s, 0.2 * s)
                e.append(float((att[h] * s).sum()))
            m = max(e)
            w = [pow(2.718281828459045, v - m) for v in e]
            z = sum(w)
            out[i, sl] = sum(w[j] / z * g[j, sl] for j in range(C))
    return out


def loop_reference_gmc(T, W1, a1, W2, a2, heads):
    h = loop_gatv2_layer(T, W1, a1, heads)
    h = torch.where(h > 0, h, torch.exp(h) - 1)  # ELU
    return loop_gatv2_layer(h, W2, a2, 1)


@pytest.mark.parametrize("dense", [True, False])
def test_reference_gmc_equals_loop_gatv2(dense):
    D, hidden, heads, C = 6, 8, 4, 5
    torch.manual_seed(0)
    gmc = ReferenceGMC(D, hidden=hidden, heads=heads, dropout=0.3, dense=dense).double().eval()
    T = Fn.normalize(torch.randn(C, D, dtype=torch.float64), dim=-1)
    c1, c2 = gmc.layer1.conv, gmc.layer2.conv
    assert c1.lin_r is c1.lin_l and c2.lin_r is c2.lin_l  # shared source/target weights
    assert c1.bias is None and c1.lin_l.bias is None and c2.bias is None
    assert c1.heads == 4 and c1.out_channels == hidden // heads and c2.heads == 1 and c2.out_channels == D
    want = loop_reference_gmc(T, c1.lin_l.weight.detach(), c1.att.detach()[0], c2.lin_l.weight.detach(),
                              c2.att.detach()[0], heads)
    got = gmc(T, complete_graph(C))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(C, dtype=torch.float64))  # no normalisation
    assert not torch.allclose(got, T)  # no residual to T


def test_reference_gmc_dropout_only_in_training_and_gradients_flow():
    torch.manual_seed(1)
    gmc = ReferenceGMC(6, hidden=8, heads=4, dropout=0.3)
    T = torch.randn(5, 6)
    graph = complete_graph(5)
    gmc.train()
    a, b = gmc(T, graph), gmc(T, graph)
    assert not torch.allclose(a, b)  # dropout active
    (a * torch.randn_like(a)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gmc.parameters())
    gmc.eval()
    torch.testing.assert_close(gmc(T, graph), gmc(T, graph))


def test_shared_weights_are_stored_once_and_reload(tmp_path):
    """safetensors refuses tensors that share memory: the state dict holds lin_l only."""
    from safetensors.torch import load_file, save_file

    from sigrl.modules.head import SigRLHead

    torch.manual_seed(2)
    head = SigRLHead(6, preset="reference", hidden=8, heads=4, top_k=2).eval()
    sd = head.state_dict()
    assert not any("lin_r" in k for k in sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "h.safetensors"))
    twin = SigRLHead.from_config(json.loads(json.dumps(head.config)))
    twin.load_state_dict(load_file(str(tmp_path / "h.safetensors")), strict=True)
    twin.eval()
    assert twin.gmc.layer1.conv.lin_r is twin.gmc.layer1.conv.lin_l
    g, L, T = torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(3, 6)
    torch.testing.assert_close(twin(g, L, T), head(g, L, T))
