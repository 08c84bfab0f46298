"""CLIP local + global matching (sigrl/modules/matching.py) against loops over images,
labels and patches, from the formulas of docs/design.md §3: s_g = <g/|g|, T_c/|T_c|>,
s_l = mean of the top-k <L_p, T_c/|T_c|> (L_p raw for "l2", normalised for "softmax"),
"l2": each part divided by its L2 norm over the labels, "softmax": softmax over the labels
at temperature tau; the modes keep one part or average both."""
import math

import pytest
import torch

from sigrl.modules.matching import match_scores


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def ref(g, L, T, k, mode, combine, tau):
    B, C = len(g), len(T)
    T = [_unit(t) for t in T]
    out = []
    for b in range(B):
        sg = [_dot(_unit(g[b]), T[c]) for c in range(C)]
        patches = L[b] if combine == "l2" else [_unit(p) for p in L[b]]
        kk = min(k, len(patches))
        sl = [sum(sorted((_dot(p, T[c]) for p in patches), reverse=True)[:kk]) / kk for c in range(C)]

        def norm(s):
            if combine == "l2":
                n = math.sqrt(sum(x * x for x in s))
                return [x / n for x in s]
            m = max(s)
            e = [math.exp((x - m) / tau) for x in s]
            return [x / sum(e) for x in e]

        parts = ([norm(sg)] if mode != "local" else []) + ([norm(sl)] if mode != "global" else [])
        out.append([sum(p[c] for p in parts) / len(parts) for c in range(C)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["local+global", "global", "local"])
@pytest.mark.parametrize("combine,tau", [("l2", 0.01), ("softmax", 0.5), ("softmax", 0.07)])
@pytest.mark.parametrize("k", [1, 3, 50])
def test_match_scores_is_the_formula(mode, combine, tau, k):
    gen = torch.Generator().manual_seed(7 * k + len(mode) + int(100 * tau))
    g = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    L = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64) * 2
    T = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 3
    got = match_scores(g, L, T, top_k=k, mode=mode, combine=combine, tau=tau)
    torch.testing.assert_close(got, ref(g.tolist(), L.tolist(), T.tolist(), k, mode, combine, tau))


def test_global_mode_needs_no_local_features_and_errors_name_the_choices():
    g, T = torch.randn(2, 4), torch.randn(3, 4)
    assert match_scores(g, None, T, mode="global").shape == (2, 3)
    with pytest.raises(ValueError, match="mode must be one of .*'local'.*got 'patch'"):
        match_scores(g, None, T, mode="patch")
    with pytest.raises(ValueError, match="combine must be one of .*'softmax'.*got 'max'"):
        match_scores(g, None, T, combine="max")
