"""Independent math for the bidirectional conditional-transport loss (sigrl/losses/transport.py).

The expected cost is written from the CT definition (Zheng & Zhou 2021; SCT) with explicit
loops over the selected labels of each image: cosine similarities, the two navigators
(softmaxes weighted by the target prior w), the source marginal w / sum(w), the mean over
images that have a selected label. Gradients: autograd of the loop formula vs ours.
"""
from __future__ import annotations

import math

import pytest
import torch

from sigrl.losses.transport import ConditionalTransportLoss

DT = torch.float64


def cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def loop_ct(feats, emb, weights, tau):
    B, C, _ = feats.shape
    per_image = []
    for b in range(B):
        sel = [c for c in range(C) if weights[b, c] > 0]
        if not sel:
            continue
        w = {c: weights[b, c] for c in sel}
        w_sum = sum(w[c] for c in sel)
        s = {(c, k): cos(feats[b, c], emb[k]) for c in sel for k in sel}
        fwd = 0.0
        for c in sel:  # visual c -> text k
            z = sum(w[k] * torch.exp(s[c, k] / tau) for k in sel)
            fwd = fwd + (w[c] / w_sum) * sum(w[k] * torch.exp(s[c, k] / tau) / z * (1 - s[c, k]) for k in sel)
        bwd = 0.0
        for k in sel:  # text k -> visual c
            z = sum(w[c] * torch.exp(s[c, k] / tau) for c in sel)
            bwd = bwd + (w[k] / w_sum) * sum(w[c] * torch.exp(s[c, k] / tau) / z * (1 - s[c, k]) for c in sel)
        per_image.append(fwd + bwd)
    if not per_image:
        return torch.zeros((), dtype=feats.dtype)
    return sum(per_image) / len(per_image)


def case(seed, B=3, C=4, D=5):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, C, D, generator=gen, dtype=DT)
    emb = torch.randn(C, D, generator=gen, dtype=DT)
    weights = torch.rand(B, C, generator=gen, dtype=DT) * 2
    weights[weights < 0.6] = 0.0  # some labels unselected
    weights[-1] = 0.0  # the last image selects nothing: left out of the mean
    weights[0, 0] = 1.3  # the first selects at least one
    return feats, emb, weights


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_value_and_gradients_match_the_loop_formula(seed, tau):
    feats, emb, weights = case(seed)
    f1, e1 = feats.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours = ConditionalTransportLoss(tau=tau)(f1, e1, weights)
    g_ours = torch.autograd.grad(ours, [f1, e1])
    f2, e2 = feats.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ref = loop_ct(f2, e2, weights, tau)
    g_ref = torch.autograd.grad(ref, [f2, e2])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_no_weights_means_all_labels_equally(seed):
    feats, emb, _ = case(seed)
    ones = torch.ones(feats.shape[:2], dtype=DT)
    ours = ConditionalTransportLoss(tau=0.3)(feats, emb)
    assert ours.item() == pytest.approx(loop_ct(feats, emb, ones, 0.3).item(), rel=1e-10)
    # weights scaled by a constant: same navigators and marginals
    assert ConditionalTransportLoss(tau=0.3)(feats, emb, 7.0 * ones).item() == pytest.approx(ours.item(), rel=1e-10)


def test_negative_weights_count_as_unselected_and_norms_do_not_matter():
    feats, emb, weights = case(5)
    w = weights.clone()
    w[1, 2] = -3.0
    ref_w = w.clamp_min(0)
    loss = ConditionalTransportLoss(tau=0.2)
    assert loss(feats, emb, w).item() == pytest.approx(loop_ct(feats, emb, ref_w, 0.2).item(), rel=1e-10)
    scale = torch.rand(feats.shape[:2], dtype=DT).unsqueeze(-1) + 0.5
    assert loss(feats * scale, emb * 3.0, w).item() == pytest.approx(loss(feats, emb, w).item(), rel=1e-10)


def test_hand_value_asymmetric_pair():
    # one image, two labels, D = 2. F0 = T0 = e0; F1 = (1, 1)/sqrt2 (45 deg); T1 = e1; tau = 1, w = 1.
    feats = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=DT)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    r = 1 / math.sqrt(2)
    s = [[1.0, 0.0], [r, r]]  # s[c][k] = cos(F_c, T_k)
    e = [[math.exp(v) for v in row] for row in s]
    fwd = 0.5 * sum(sum(e[c][k] / sum(e[c]) * (1 - s[c][k]) for k in range(2)) for c in range(2))
    bwd = 0.5 * sum(sum(e[c][k] / (e[0][k] + e[1][k]) * (1 - s[c][k]) for c in range(2)) for k in range(2))
    assert ConditionalTransportLoss(tau=1.0)(feats, emb).item() == pytest.approx(fwd + bwd, rel=1e-12)
    assert fwd != pytest.approx(bwd)  # the two directions differ here: both must be present


def test_small_weights_and_mixed_dtypes():
    feats, emb, weights = case(7)
    small = weights * 0.05  # every image's weights sum below 1: the marginal still normalises
    assert ConditionalTransportLoss(tau=0.4)(feats, emb, small).item() == pytest.approx(
        loop_ct(feats, emb, small, 0.4).item(), rel=1e-10)
    # float32 weights and label embeddings with float64 features: computed in float64
    w32, e32 = (small + 0.01 * (small > 0)).float(), emb.float()
    got = ConditionalTransportLoss(tau=0.4)(feats, e32, w32).item()
    assert got == pytest.approx(loop_ct(feats, e32.double(), w32.double(), 0.4).item(), rel=1e-12, abs=1e-14)


def test_default_tau_and_messages():
    from sigrl.errors import ConfigError

    assert ConditionalTransportLoss().tau == 0.1
    with pytest.raises(ConfigError, match=r"^transport: tau must be a finite number > 0, got inf"):
        ConditionalTransportLoss(tau=float("inf"))
    loss = ConditionalTransportLoss()
    with pytest.raises(ValueError, match=r"^label_feats must be \(B, C, D\), got \(3, 4\)"):
        loss(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"^label_emb must be \(C, D\) = \(3, 4\), got \(5, 4\)"):
        loss(torch.zeros(2, 3, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"^weights must be \(B, C\) = \(2, 3\), got \(2, 5\)"):
        loss(torch.zeros(2, 3, 4), torch.zeros(3, 4), torch.ones(2, 5))
