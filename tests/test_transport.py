"""Conditional transport loss: hand values, matched vs shuffled features, gradients, no NaN."""
import math

import pytest
import torch

from sigrl.errors import ConfigError
from sigrl.losses.transport import ConditionalTransportLoss

E = math.e


def test_hand_value_two_labels():
    # F = T = I (2 labels, 2 dims), tau = 1: s = I, K = 1 - I.
    # each navigator puts 1/(e+1) on the wrong label at cost 1, both directions -> 2/(e+1)
    feats = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    emb = torch.eye(2, dtype=torch.float64)
    loss = ConditionalTransportLoss(tau=1.0)
    assert loss(feats, emb).item() == pytest.approx(2 / (E + 1))
    # only label 0 selected: it transports to itself at cost 0
    assert loss(feats, emb, torch.tensor([[1.0, 0.0]], dtype=torch.float64)).item() == pytest.approx(0.0)
    # weights (2, 1) act as the target prior and the source marginal:
    # from 0: pi ~ [2e, 1] -> 1/(2e+1) wrong; from 1: pi ~ [2, e] -> 2/(2+e) wrong; marginal (2/3, 1/3)
    one_way = 2 / 3 * 1 / (2 * E + 1) + 1 / 3 * 2 / (2 + E)
    value = loss(feats, emb, torch.tensor([[2.0, 1.0]], dtype=torch.float64)).item()
    assert value == pytest.approx(2 * one_way)


def test_near_zero_when_matched_and_labels_far_apart():
    C = 5
    emb = torch.eye(C) * 3.0  # orthogonal labels (norms do not matter: cosine)
    feats = emb.unsqueeze(0).repeat(2, 1, 1)
    value = ConditionalTransportLoss(tau=0.1)(feats, emb).item()
    # wrong mass per source ~ (C-1) e^{-10}, cost 1, two directions
    assert value == pytest.approx(2 * (C - 1) * math.exp(-10) / (1 + (C - 1) * math.exp(-10)), rel=1e-4)
    assert value < 1e-3


def test_larger_when_features_shuffled():
    gen = torch.Generator().manual_seed(0)
    C, D = 6, 16
    emb = torch.randn(C, D, generator=gen)
    emb = torch.linalg.qr(emb.T)[0].T  # orthonormal rows: labels far apart
    feats = emb.unsqueeze(0).repeat(3, 1, 1)
    weights = torch.zeros(3, C)
    weights[:, :3] = 1.0  # each image has labels 0, 1, 2
    loss = ConditionalTransportLoss(tau=0.1)
    matched = loss(feats, emb, weights).item()
    label_shuffled = loss(feats[:, torch.tensor([3, 4, 5, 0, 1, 2])], emb, weights).item()
    dim_shuffled = loss(feats[..., torch.randperm(D, generator=gen)], emb, weights).item()
    assert matched < 1e-3
    assert label_shuffled > 1.0 and dim_shuffled > 0.5
    # a set-to-set cost: permuting the selected features among themselves changes nothing
    within = loss(feats[:, torch.tensor([2, 0, 1, 3, 4, 5])], emb, weights).item()
    assert within == pytest.approx(matched, abs=1e-6)


def test_differentiable_gradcheck():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    emb = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loss = ConditionalTransportLoss(tau=0.5)
    assert torch.autograd.gradcheck(lambda f, t: loss(f, t, weights), (feats, emb))


def test_all_zero_weights_no_nan():
    feats = torch.randn(2, 4, 8, requires_grad=True)
    emb = torch.randn(4, 8, requires_grad=True)
    value = ConditionalTransportLoss()(feats, emb, torch.zeros(2, 4))
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(feats.grad).all() and torch.isfinite(emb.grad).all()
    # a zero feature vector (e.g. padding) is fine too
    zero = torch.zeros(1, 4, 8, requires_grad=True)
    v = ConditionalTransportLoss()(zero, emb.detach())
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(zero.grad).all()


def test_bad_inputs():
    with pytest.raises(ConfigError):
        ConditionalTransportLoss(tau=0)
    with pytest.raises(ValueError):
        ConditionalTransportLoss()(torch.randn(2, 3, 4), torch.randn(5, 4))
    with pytest.raises(ValueError):
        ConditionalTransportLoss()(torch.randn(2, 3, 4), torch.randn(3, 4), torch.ones(2, 5))


def test_adapter_label_features_pool_the_patches_each_label_matches():
    """AdapterHead's label_feats (what the transport loss aligns with the labels): every
    F[b, c] is a softmax-weighted mean of the adapted patches, dominated by the patch
    closest to label c."""
    from sigrl.modules.adapter import AdapterHead

    torch.manual_seed(0)
    D, P = 16, 4
    head = AdapterHead(D, logit_scale=100.0)
    patches = torch.nn.functional.normalize(torch.eye(D)[:P] + 0.01 * torch.randn(P, D), dim=-1)
    local = patches.unsqueeze(0)  # (1, P, D)
    g = patches.mean(0, keepdim=True)
    labels = patches[[2, 0]]  # label 0 looks like patch 2, label 1 like patch 0
    _, extras = head(g, local, labels, return_extras=True)
    F = extras["label_feats"]
    assert F.shape == (1, 2, D)
    adapted = extras["local_feats"][0]  # (P, D); the untrained adapter keeps the directions
    assert torch.allclose(F[0, 0], adapted[2], atol=1e-3)
    assert torch.allclose(F[0, 1], adapted[0], atol=1e-3)
    # identical patches: every label pools to that patch
    same = patches[:1].expand(P, D).unsqueeze(0)
    _, extras = head(g, same, labels, return_extras=True)
    assert torch.allclose(extras["label_feats"][0], extras["local_feats"][0, :1].expand(2, D), atol=1e-6)
