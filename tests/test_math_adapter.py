"""The adapter head (sigrl/modules/adapter.py) with random weights in both MLPs, against the
formulas of its docstring written with plain loops (docs/design.md §3): g' = normalize(g' +
MLP_g(g')), L'_p = L_p + MLP_l(L_p) raw under "l2" or normalize(l_p + MLP_l(l_p)) otherwise,
s_g = <g', T_c>, s_l = top-k mean of <L'_p, T_c>, then the combination rule; and the
label features F[b, c] = sum_p softmax_p(t <L'_p/|L'_p|, T_c>) L'_p."""
import math

import pytest
import torch

from sigrl.modules.adapter import AdapterHead

D, H = 4, 3


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _mlp(x, fc1, fc2):
    """x + W_b gelu(W_a x + a) + b, one vector."""
    (Wa, a), (Wb, b) = fc1, fc2
    h = [_gelu(_dot(Wa[i], x) + a[i]) for i in range(len(a))]
    return [x[j] + _dot(Wb[j], h) + b[j] for j in range(len(x))]


def _params(lin):
    return lin.weight.tolist(), lin.bias.tolist()


def ref_adapter(head, g, L, T, combine, scale, k, mode):
    ga = (_params(head.global_adapter.fc1), _params(head.global_adapter.fc2))
    loc = head.local_adapter or head.global_adapter
    la = (_params(loc.fc1), _params(loc.fc2))
    T = [_unit(t) for t in T]
    out, feats = [], []
    for b in range(len(g)):
        gp = _unit(_mlp(_unit(g[b]), *ga))
        if combine == "l2":
            Lp = [_mlp(p, *la) for p in L[b]]
        else:
            Lp = [_unit(_mlp(_unit(p), *la)) for p in L[b]]
        sg = [_dot(gp, t) for t in T]
        kk = min(k, len(Lp))
        sl = [sum(sorted((_dot(p, t) for p in Lp), reverse=True)[:kk]) / kk for t in T]
        if combine == "l2":
            ng, nl = math.sqrt(sum(x * x for x in sg)), math.sqrt(sum(x * x for x in sl))
            parts = ([[x / ng for x in sg]] if mode != "local" else []) + ([[x / nl for x in sl]] if mode != "global" else [])
            out.append([scale * sum(p[c] for p in parts) / len(parts) for c in range(len(T))])
        else:
            def sm(s):
                m = max(s)
                e = [math.exp(scale * (x - m)) for x in s]
                return [x / sum(e) for x in e]
            parts = ([sm(sg)] if mode != "local" else []) + ([sm(sl)] if mode != "global" else [])
            out.append([math.log(sum(p[c] for p in parts) / len(parts)) for c in range(len(T))])
        t = 100.0 if combine == "l2" else scale
        Fb = []
        for tc in T:
            w = [t * _dot(_unit(p), tc) for p in Lp]
            m = max(w)
            e = [math.exp(x - m) for x in w]
            Fb.append([sum(e[p] / sum(e) * Lp[p][d] for p in range(len(Lp))) for d in range(D)])
        feats.append(Fb)
    return torch.tensor(out, dtype=torch.float64), torch.tensor(feats, dtype=torch.float64)


def _random_head(**kw):
    head = AdapterHead(D, hidden=H, top_k=2, **kw).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return head


@pytest.mark.parametrize("combine,scale", [("l2", 1.0), ("l2", 3.0), ("softmax", 5.0)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("mode", ["local+global", "local"])
def test_adapter_head_is_its_formula(combine, scale, shared, mode):
    head = _random_head(combine=combine, logit_scale=scale, shared=shared, mode=mode)
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(2, D, generator=gen, dtype=torch.float64)
    L = torch.randn(2, 5, D, generator=gen, dtype=torch.float64) * 2
    T = torch.randn(3, D, generator=gen, dtype=torch.float64)
    logits, ex = head(g, L, T, return_extras=True)
    want, feats = ref_adapter(head, g.tolist(), L.tolist(), T.tolist(), combine, scale, 2, mode)
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(ex["label_feats"], feats)


def test_global_mode_with_local_features_still_returns_label_features():
    head = _random_head(mode="global", logit_scale=5.0)
    gen = torch.Generator().manual_seed(2)
    g, L, T = (torch.randn(2, D, generator=gen, dtype=torch.float64), torch.randn(2, 5, D, generator=gen,
               dtype=torch.float64), torch.randn(3, D, generator=gen, dtype=torch.float64))
    logits, ex = head(g, L, T, return_extras=True)
    want, feats = ref_adapter(head, g.tolist(), L.tolist(), T.tolist(), "softmax", 5.0, 2, "global")
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(ex["label_feats"], feats)
    logits2, ex2 = head(g, None, T, return_extras=True)
    torch.testing.assert_close(logits2, want)
    assert ex2["label_feats"] is None and ex2["local"] is None
