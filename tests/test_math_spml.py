"""Independent math for the single-positive / partial-label losses (sigrl/losses/spml.py)
and VLPL's training loss (sigrl/methods/vlpl.py).

Every expected value below is written from the papers' formulas (Cole et al. 2021;
Zhou et al. 2022; Kim et al. 2022; Xing et al. 2023) with explicit Python loops over the
(image, class) entries and p = 1 / (1 + exp(-x)) -- never by calling our code for the
expected side. Where a loss trains, the gradient of that loop formula (autograd) is
compared with the gradient of ours; where a loss keeps state over epochs (ROLE's label
estimates, EM+APL's pseudo negatives, LL-R's rejection schedule) the state after each
step is written out by hand.
"""
from __future__ import annotations

import math

import pytest
import torch

from sigrl.errors import ConfigError
from sigrl.losses.spml import (
    AssumeNegativeLoss,
    AsymmetricPseudoLabelLoss,
    EntropyMaximizationLoss,
    ExpectedPositiveRegularizationLoss,
    FullLabelLoss,
    LargeLossRejectionLoss,
    OnlineLabelEstimationLoss,
    WeightedAssumeNegativeLoss,
    binary_entropy,
)
from sigrl.methods.vlpl import VLPLLoss

B, C = 5, 4
DT = torch.float64


# ------------------------------------------------------------------ scalar building blocks
def sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def nlp(x):  # -log p
    return -torch.log(sig(x))


def nl1mp(x):  # -log(1 - p)
    return -torch.log(1.0 - sig(x))


def entropy(x):
    p = sig(x)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p))


def make_case(seed: int, b: int = B, c: int = C, negatives: bool = True):
    """Random logits in about [-3, 3] and an observed matrix with one positive per image,
    some observed negatives (partial labels) and the rest unobserved."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, c, generator=gen, dtype=DT) * 6 - 3)
    obs = torch.zeros(b, c, dtype=DT)
    obs[torch.arange(b), torch.randint(0, c, (b,), generator=gen)] = 1.0
    if negatives:
        neg = (torch.rand(b, c, generator=gen) < 0.3) & (obs == 0)
        obs[neg] = -1.0
    return x, obs


def grads(fn, x, *others):
    """(value, d value / d x, [d value / d o for o in others]) of fn(x, *others)."""
    x = x.detach().clone().requires_grad_(True)
    others = [o.detach().clone().requires_grad_(True) for o in others]
    v = fn(x, *others)
    gs = torch.autograd.grad(v, [x, *others])
    return v.detach(), gs[0], list(gs[1:])


def assert_close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a, b)


# ------------------------------------------------------------------ reference formulas (loops)
def ref_full(x, t):
    total, known = 0.0, 0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] > 0:
                total = total + t[i, j].abs() * nlp(x[i, j])
            elif t[i, j] < 0:
                total = total + t[i, j].abs() * nl1mp(x[i, j])
            if t[i, j] != 0:
                known += 1
    return total / max(known, 1)


def ref_an(x, t):
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            total = total + (nlp(x[i, j]) if t[i, j] > 0 else nl1mp(x[i, j]))
    return total / x.numel()


def ref_wan(x, t, gamma=None):
    c = x.shape[1]
    g = 1.0 / (c - 1) if gamma is None else gamma
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(c):
            if t[i, j] > 0:
                total = total + nlp(x[i, j])
            elif t[i, j] < 0:
                total = total + nl1mp(x[i, j])
            else:
                total = total + g * nl1mp(x[i, j])
    return total / x.numel()


def ref_epr_penalty(x, k):
    b, c = x.shape
    mean_pos = sum(sum(sig(x[i, j]) for j in range(c)) for i in range(b)) / b
    return (mean_pos - k) ** 2 / c**2


def ref_observed_bce_sum(x, t):
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] > 0:
                total = total + nlp(x[i, j])
            elif t[i, j] < 0:
                total = total + nl1mp(x[i, j])
    return total


def ref_epr(x, t, k):
    return ref_observed_bce_sum(x, t) / x.numel() + ref_epr_penalty(x, k)


def ref_em(x, t, alpha):
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] > 0:
                total = total + nlp(x[i, j])
            elif t[i, j] < 0:
                total = total + nl1mp(x[i, j])
            else:
                total = total - alpha * entropy(x[i, j])
    return total / x.numel()


def ref_role(x, est, t, k):
    """Cole et al.: 0.5 * (classifier + estimator); each cross term's target is detached."""
    b, c = x.shape
    cls_sum, est_sum = 0.0, 0.0
    for i in range(b):
        for j in range(c):
            p_t, q_t = sig(x[i, j]).detach(), sig(est[i, j]).detach()
            obs_p = nlp(x[i, j]) if t[i, j] > 0 else (nl1mp(x[i, j]) if t[i, j] < 0 else 0.0)
            obs_q = nlp(est[i, j]) if t[i, j] > 0 else (nl1mp(est[i, j]) if t[i, j] < 0 else 0.0)
            cls_sum = cls_sum + obs_p + q_t * nlp(x[i, j]) + (1 - q_t) * nl1mp(x[i, j])
            est_sum = est_sum + obs_q + p_t * nlp(est[i, j]) + (1 - p_t) * nl1mp(est[i, j])
    classifier = cls_sum / (b * c) + ref_epr_penalty(x, k)
    estimator = est_sum / (b * c) + ref_epr_penalty(est, k)
    return 0.5 * (classifier + estimator)


def ref_em_apl(x, t, pseudo_mask, pseudo_target, alpha, beta):
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] > 0:
                total = total + nlp(x[i, j])
            elif t[i, j] < 0:
                total = total + nl1mp(x[i, j])
            elif pseudo_mask[i, j]:
                q = pseudo_target[i, j]
                total = total + beta * (q * nlp(x[i, j]) + (1 - q) * nl1mp(x[i, j]))
            else:
                total = total - alpha * entropy(x[i, j])
    return total / x.numel()


def ref_ll_r(x, t, epoch, delta, correct=False):
    """Kim et al. LL-R / LL-Ct with the rate counted over the unobserved entries."""
    rate = min(1.0, epoch * delta)
    unobs = [(i, j) for i in range(x.shape[0]) for j in range(x.shape[1]) if t[i, j] == 0]
    k = math.ceil(rate * len(unobs) - 1e-9)
    ranked = sorted(unobs, key=lambda ij: -float(nl1mp(x[ij].detach())))
    rejected = set(ranked[:k])
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] > 0:
                total = total + nlp(x[i, j])
            elif (i, j) in rejected:
                total = total + (nlp(x[i, j]) if correct else 0.0)
            else:
                total = total + nl1mp(x[i, j])
    return total / x.numel(), rejected


def ref_vlpl(x, t, pseudo, alpha, beta_pos, beta_neg, s, unobserved="em"):
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] > 0:
                total = total + nlp(x[i, j])
            elif t[i, j] < 0:
                total = total + nl1mp(x[i, j])
            elif pseudo is not None and pseudo[i, j] > 0:
                total = total + beta_pos * ((1 - s) * nlp(x[i, j]) + s * nl1mp(x[i, j]))
            elif pseudo is not None and pseudo[i, j] < 0:
                total = total + beta_neg * (s * nlp(x[i, j]) + (1 - s) * nl1mp(x[i, j]))
            elif unobserved == "em":
                total = total - alpha * entropy(x[i, j])
            else:
                total = total + nl1mp(x[i, j])
    return total / x.numel()


# ================================================================== stateless losses
SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_entropy_matches_definition(seed):
    x, _ = make_case(seed)
    assert_close(binary_entropy(x), torch.stack([torch.stack([entropy(v) for v in row]) for row in x]))


@pytest.mark.parametrize("seed", SEEDS)
def test_full_value_and_gradient(seed):
    x, obs = make_case(seed)
    ours, g_ours, _ = grads(lambda a: FullLabelLoss()(a, obs), x)
    ref, g_ref, _ = grads(lambda a: ref_full(a, obs), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


def test_full_soft_targets_and_no_known_entries():
    x, _ = make_case(3)
    gen = torch.Generator().manual_seed(3)
    soft = (torch.rand(B, C, generator=gen, dtype=DT) * 2 - 1)
    soft[0, :2] = 0.0
    ours, g_ours, _ = grads(lambda a: FullLabelLoss()(a, soft), x)
    ref, g_ref, _ = grads(lambda a: ref_full(a, soft), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)
    assert FullLabelLoss()(x, torch.zeros_like(x)).item() == 0.0  # nothing known: 0, not NaN


@pytest.mark.parametrize("seed", SEEDS)
def test_an_value_and_gradient(seed):
    x, obs = make_case(seed)
    ours, g_ours, _ = grads(lambda a: AssumeNegativeLoss()(a, obs), x)
    ref, g_ref, _ = grads(lambda a: ref_an(a, obs), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [None, 0.375])
def test_wan_value_and_gradient(seed, gamma):
    x, obs = make_case(seed, c=5)  # C = 5: default gamma 1/4 (both weights exact in float32)
    ours, g_ours, _ = grads(lambda a: WeightedAssumeNegativeLoss(neg_weight=gamma)(a, obs), x)
    ref, g_ref, _ = grads(lambda a: ref_wan(a, obs, gamma), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


@pytest.mark.parametrize("gamma,c", [(0.3, 5), (None, 4)])  # 1/3 is not exact in float32 either
def test_wan_float64_keeps_the_weight_in_float64(gamma, c):
    x, obs = make_case(4, c=c)
    assert_close(WeightedAssumeNegativeLoss(neg_weight=gamma)(x, obs), ref_wan(x, obs, gamma), tol=1e-13)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [0.0, 1.5, 3.0])
def test_epr_value_and_gradient(seed, k):
    x, obs = make_case(seed)
    ours, g_ours, _ = grads(lambda a: ExpectedPositiveRegularizationLoss(expected_num_pos=k)(a, obs), x)
    ref, g_ref, _ = grads(lambda a: ref_epr(a, obs, k), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


def test_epr_penalty_is_zero_at_the_expected_count_and_unobserved_get_only_its_gradient():
    # two images, 3 classes, all logits 0: p = 0.5 everywhere, expected count 1.5 -> no penalty
    x = torch.zeros(2, 3, dtype=DT)
    obs = torch.tensor([[1.0, 0, 0], [0, 0, -1.0]], dtype=DT)
    v = ExpectedPositiveRegularizationLoss(expected_num_pos=1.5)(x, obs).item()
    assert v == pytest.approx((math.log(2) + math.log(2)) / 6, abs=1e-12)
    # with k = 1.5 the penalty's gradient is 0 at p = 0.5: unobserved entries get no gradient
    _, g, _ = grads(lambda a: ExpectedPositiveRegularizationLoss(expected_num_pos=1.5)(a, obs), x)
    assert g[0, 1] == 0 and g[1, 0] == 0
    # k = 0.5: mean count 1.5 is 1 too many -> d/dx = 2 * (1.5 - 0.5) / 9 * (1/2) * 0.25 per entry
    _, g, _ = grads(lambda a: ExpectedPositiveRegularizationLoss(expected_num_pos=0.5)(a, obs), x)
    assert g[0, 1].item() == pytest.approx(2 * 1.0 / 9 * 0.5 * 0.25, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_em_value_and_gradient(seed, alpha):
    x, obs = make_case(seed)
    ours, g_ours, _ = grads(lambda a: EntropyMaximizationLoss(alpha=alpha)(a, obs), x)
    ref, g_ref, _ = grads(lambda a: ref_em(a, obs, alpha), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


# ================================================================== LL-R
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("epoch", [0, 1, 2, 5, 30])
@pytest.mark.parametrize("correct", [False, True])
def test_ll_r_value_and_gradient(seed, epoch, correct):
    x, obs = make_case(seed, b=6, c=5, negatives=False)  # 24 unobserved
    delta = 0.07  # epoch 1: 1.68 -> 2 rejected (ceil, not floor, not round)
    loss = LargeLossRejectionLoss(delta_rel=delta, correct=correct)
    ours, g_ours, _ = grads(lambda a: loss(a, obs, epoch=epoch), x)
    ref, g_ref, _ = grads(lambda a: ref_ll_r(a, obs, epoch, delta, correct)[0], x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


def test_ll_r_schedule_by_epoch_hand_counts():
    """20 unobserved entries, delta 0.07: k = ceil(0.07 * e * 20) entries rejected at epoch e
    (0-based), capped at all 20: 0, 2, 3, 5, 6, 7, ..., 20."""
    x, obs = make_case(11, b=4, c=6, negatives=False)  # 4 positives, 20 unobserved
    assert int((obs == 0).sum()) == 20
    loss = LargeLossRejectionLoss(delta_rel=0.07)
    expected_k = {0: 0, 1: 2, 2: 3, 3: 5, 4: 6, 7: 10, 14: 20, 15: 20, 40: 20}
    per = nl1mp(x)
    unobs_sorted = sorted(per[obs == 0].tolist(), reverse=True)
    total_an = float(ref_an(x, obs)) * x.numel()
    for epoch, k in expected_k.items():
        assert loss.rejection_rate(epoch) == pytest.approx(min(1.0, 0.07 * epoch))
        got = loss(x, obs, epoch=epoch).item() * x.numel()
        assert got == pytest.approx(total_an - sum(unobs_sorted[:k]), abs=1e-9), epoch
        _, rejected = ref_ll_r(x, obs, epoch, 0.07)
        assert len(rejected) == k
    # observed positives are never rejected, even when their loss is the largest
    y = x.clone()
    y[obs > 0] = -8.0  # -log p = 8 for every positive
    assert loss(y, obs, epoch=1).item() * y.numel() == pytest.approx(
        float(ref_ll_r(y, obs, 1, 0.07)[0]) * y.numel(), abs=1e-9)


def test_ll_r_rejected_entries_get_no_gradient_and_ll_ct_pushes_them_up():
    x, obs = make_case(5, b=4, c=5, negatives=False)
    _, rejected = ref_ll_r(x, obs, 3, 0.1)  # 16 unobserved, k = ceil(4.8) = 5
    assert len(rejected) == 5
    _, g, _ = grads(lambda a: LargeLossRejectionLoss(delta_rel=0.1)(a, obs, epoch=3), x)
    _, g_ct, _ = grads(lambda a: LargeLossRejectionLoss(delta_rel=0.1, correct=True)(a, obs, epoch=3), x)
    for i in range(4):
        for j in range(5):
            if (i, j) in rejected:
                assert g[i, j] == 0
                assert g_ct[i, j] < 0  # relabelled positive: descent raises the logit
            elif obs[i, j] == 0:
                assert g[i, j] > 0 and g_ct[i, j] > 0  # still an assumed negative


# ================================================================== VLPL
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("unobserved", ["em", "an"])
def test_vlpl_value_and_gradient_with_batch_pseudo_labels(seed, unobserved):
    x, obs = make_case(seed, b=6, c=5)
    gen = torch.Generator().manual_seed(100 + seed)
    pseudo = torch.randint(-1, 2, (6, 5), generator=gen).to(DT)
    pseudo[obs != 0] = -obs[obs != 0]  # conflicting pseudo labels on observed entries: ignored
    hp = dict(alpha=0.2, beta_pos=0.7, beta_neg=0.4, smoothing=0.1)
    loss = VLPLLoss(unobserved=unobserved, **hp)
    ours, g_ours, _ = grads(lambda a: loss(a, obs, pseudo=pseudo), x)
    ref, g_ref, _ = grads(lambda a: ref_vlpl(a, obs, pseudo, 0.2, 0.7, 0.4, 0.1, unobserved), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)
    # no pseudo labels: EM (or AN) on every unobserved entry
    assert_close(loss(x, obs), ref_vlpl(x, obs, None, 0.2, 0.7, 0.4, 0.1, unobserved))


def test_vlpl_stored_pseudo_labels_by_index():
    x, obs = make_case(7, b=3, c=4)
    stored = torch.tensor([[1, -1, 0, 1], [0, 1, 1, -1], [-1, 0, 1, 0], [1, 1, -1, -1]], dtype=torch.int8)
    loss = VLPLLoss(num_images=4, num_classes=4, alpha=0.1, beta_pos=0.6, beta_neg=0.3, smoothing=0.2)
    loss.set_pseudo_labels(stored.to(DT))
    index = torch.tensor([3, 0, 2])
    got = loss(x, obs, index=index)
    assert_close(got, ref_vlpl(x, obs, stored[index].to(DT), 0.1, 0.6, 0.3, 0.2))


# ================================================================== ROLE
def _role(num_images, k=1.5, seed=0):
    return OnlineLabelEstimationLoss(num_images=num_images, num_classes=C, expected_num_pos=k, seed=seed).double()


@pytest.mark.parametrize("seed", SEEDS)
def test_role_value_and_gradients_for_both_players(seed):
    x, obs = make_case(seed)
    loss = _role(8)
    gen = torch.Generator().manual_seed(50 + seed)
    est0 = torch.rand(8, C, generator=gen, dtype=DT) * 4 - 2
    with torch.no_grad():
        loss.label_logits.copy_(est0)
    loss.seen.fill_(True)  # no first-sight initialisation here
    index = torch.tensor([6, 1, 3, 0, 4])

    xg = x.clone().requires_grad_(True)
    ours = loss(xg, obs, index=index)
    g_x, g_est = torch.autograd.grad(ours, [xg, loss.label_logits])

    xr = x.clone().requires_grad_(True)
    est_r = est0.clone().requires_grad_(True)
    ref = ref_role(xr, est_r[index], obs, 1.5)
    gr_x, gr_est = torch.autograd.grad(ref, [xr, est_r])
    assert_close(ours.detach(), ref.detach())
    assert_close(g_x, gr_x)
    assert_close(g_est, gr_est)
    untouched = torch.tensor([2, 5, 7])
    assert (g_est[untouched] == 0).all()  # images not in the batch get no gradient


def test_role_first_sight_initialisation_then_state_kept():
    loss = _role(4, seed=3)
    w = 0.1
    lo, hi = math.log((0.5 - w) / (0.5 + w)), math.log((0.5 + w) / (0.5 - w))
    init = loss.label_logits.detach().clone()
    assert (init >= lo).all() and (init <= hi).all()  # uniform in [logit(0.4), logit(0.6)]
    assert init.std() > 0.05  # not all equal
    assert torch.equal(init, _role(4, seed=3).label_logits.detach())  # the seed fixes it
    assert not torch.equal(init, _role(4, seed=4).label_logits.detach())
    obs = torch.tensor([[1.0, 0, -1.0, 0], [0, 0, 0, 1.0]], dtype=DT)
    index = torch.tensor([2, 0])
    loss(torch.zeros(2, C, dtype=DT), obs, index=index)
    after = loss.label_logits.detach()
    big = math.log(0.995 / 0.005)
    expected = init.clone()
    expected[2, 0], expected[2, 2] = big, -big
    expected[0, 3] = big
    assert_close(after, expected, tol=1e-12)  # unobserved estimates keep their random init
    assert loss.seen.tolist() == [True, False, True, False]
    # a seen image is not re-initialised: change its estimate, call again with other labels
    with torch.no_grad():
        loss.label_logits[2, 0] = -0.7
    loss(torch.zeros(1, C, dtype=DT), torch.tensor([[1.0, 1.0, 0, 0]], dtype=DT), index=torch.tensor([2]))
    assert loss.label_logits[2, 0].item() == pytest.approx(-0.7)
    assert loss.label_logits[2, 1].item() == pytest.approx(expected[2, 1].item())


def test_role_one_sgd_step_moves_estimates_by_the_hand_gradient():
    x, obs = make_case(9, b=3)
    loss = _role(3)
    loss.seen.fill_(True)
    est0 = loss.label_logits.detach().clone()
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    index = torch.tensor([2, 0, 1])
    loss(x, obs, index=index).backward()
    opt.step()
    # hand: d/d est[b, c] of 0.5 * (estimator) = 0.5 * [ (q - [pos]) (1 if pos) ... ] ->
    # for the per-entry sum: d(-log q)/dz = q - 1; d(-log(1-q))/dz = q; soft BCE with target p: q - p
    p, q = sig(x), sig(est0[index])
    d_entry = (q - p) + torch.where(obs > 0, q - 1, torch.zeros_like(q)) + torch.where(obs < 0, q, torch.zeros_like(q))
    d_reg = 2 * (q.sum(1).mean() - 1.5) / C**2 * (q * (1 - q)) / 3
    d = 0.5 * (d_entry / (3 * C) + d_reg)
    expected = est0.clone()
    expected[index] -= 0.5 * d
    assert_close(loss.label_logits.detach(), expected, tol=1e-10)


# ================================================================== EM + APL
@pytest.mark.parametrize("seed", SEEDS)
def test_em_apl_value_and_gradient_with_pseudo_negatives(seed):
    x, obs = make_case(seed)
    loss = AsymmetricPseudoLabelLoss(num_images=6, num_classes=C, alpha=0.15, beta=0.6, auto_update=False)
    gen = torch.Generator().manual_seed(70 + seed)
    mask = torch.rand(6, C, generator=gen) < 0.5
    loss.pseudo_mask.copy_(mask)
    loss.pseudo_target.copy_(torch.rand(6, C, generator=gen) * 0.3)
    target = loss.pseudo_target.double()  # the float32 buffer's values
    index = torch.tensor([5, 0, 2, 3, 1])
    ours, g_ours, _ = grads(lambda a: loss(a, obs, index=index), x)
    ref, g_ref, _ = grads(lambda a: ref_em_apl(a, obs, mask[index], target[index], 0.15, 0.6), x)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


def ref_apl_round(probs, observed, mask, target, neg_proportion, rounds):
    """One APL round by hand: per class, floor(prop * U_c / rounds) of the lowest-probability
    unobserved entries not yet pseudo-labelled become pseudo negatives with target = prob."""
    mask, target = mask.clone(), target.clone()
    n, c = probs.shape
    for j in range(c):
        u = sum(1 for i in range(n) if observed[i, j] == 0)
        k = math.floor(neg_proportion * u / rounds)
        cands = sorted((float(probs[i, j]), i) for i in range(n) if observed[i, j] == 0 and not mask[i, j])
        for _, i in cands[:k]:
            mask[i, j] = True
            target[i, j] = probs[i, j]
    return mask, target


def test_em_apl_assign_round_by_hand():
    gen = torch.Generator().manual_seed(12)
    n, c = 9, 3
    probs = torch.rand(n, c, generator=gen)
    observed = torch.zeros(n, c)
    observed[0, 0] = observed[4, 1] = 1
    observed[1, 2] = -1
    loss = AsymmetricPseudoLabelLoss(num_images=n, num_classes=c, num_epochs=5, warmup_epochs=2, neg_proportion=0.8)
    # rounds = 3; class 0: U = 8 -> floor(6.4 / 3) = 2; class 1: 2; class 2: 2
    added = loss.assign_pseudo_labels(probs, observed)
    m, t = ref_apl_round(probs, observed, torch.zeros(n, c, dtype=torch.bool), torch.zeros(n, c), 0.8, 3)
    assert added == 6 and int(m.sum()) == 6
    assert torch.equal(loss.pseudo_mask, m)
    assert torch.allclose(loss.pseudo_target, t)
    # second round with new probabilities: already-labelled entries are not candidates again
    probs2 = torch.rand(n, c, generator=gen)
    added2 = loss.assign_pseudo_labels(probs2, observed)
    m2, t2 = ref_apl_round(probs2, observed, m, t, 0.8, 3)
    assert added2 == 6 and torch.equal(loss.pseudo_mask, m2) and torch.allclose(loss.pseudo_target, t2)
    # the lowest probabilities were taken (class 0, round 1)
    low = sorted((float(probs[i, 0]), i) for i in range(n) if observed[i, 0] == 0)[:2]
    assert {i for _, i in low} == set(torch.nonzero(m[:, 0]).flatten().tolist())


def test_em_apl_assign_on_a_subset_index_and_caps_at_candidates():
    loss = AsymmetricPseudoLabelLoss(num_images=6, num_classes=1, num_epochs=2, warmup_epochs=1, neg_proportion=1.0)
    probs = torch.tensor([[0.3], [0.1], [0.2]])
    obs = torch.tensor([[0], [0], [1]])
    added = loss.assign_pseudo_labels(probs, obs, index=torch.tensor([4, 1, 5]))
    # U = 2, rounds = 1 -> 2 labelled: dataset rows 4 and 1 (row 5 is observed)
    assert added == 2
    assert loss.pseudo_mask[:, 0].tolist() == [False, True, False, False, True, False]
    assert loss.pseudo_target[1, 0].item() == pytest.approx(0.1) and loss.pseudo_target[4, 0].item() == pytest.approx(0.3)
    assert loss.assign_pseudo_labels(probs, obs, index=torch.tensor([4, 1, 5])) == 0  # none left


def test_em_apl_epoch_state_machine_by_hand():
    """num_epochs 4, warm-up 2 -> rounds at the first call of epochs 2 and 3, each from the
    predictions recorded during the previous epoch; two batches per epoch."""
    n, c = 6, 2
    loss = AsymmetricPseudoLabelLoss(num_images=n, num_classes=c, num_epochs=4, warmup_epochs=2,
                                     alpha=0.1, beta=0.5, neg_proportion=1.0)
    obs = torch.tensor([[1, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, -1]], dtype=DT)
    batches = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    gen = torch.Generator().manual_seed(21)
    logits_by_epoch = [torch.rand(n, c, generator=gen, dtype=DT) * 4 - 2 for _ in range(4)]
    mask = torch.zeros(n, c, dtype=torch.bool)
    target = torch.zeros(n, c, dtype=DT)
    for epoch in range(4):
        if epoch >= 2:  # a round from the previous epoch's predictions
            prev = sig(logits_by_epoch[epoch - 1])
            mask, target = ref_apl_round(prev, obs, mask, target, 1.0, 2)
        for bi, idx in enumerate(batches):
            x = logits_by_epoch[epoch][idx]
            got = loss(x, obs[idx], index=idx, epoch=epoch)
            assert_close(got, ref_em_apl(x, obs[idx], mask[idx], target[idx], 0.1, 0.5), tol=1e-6)
            assert torch.equal(loss.pseudo_mask, mask), (epoch, bi)
            assert torch.allclose(loss.pseudo_target.double(), target, atol=1e-6), (epoch, bi)
    # counts: class 0 has U = 5 -> floor(5 / 2) = 2 per round; class 1 has U = 4 -> 2 per round
    assert loss.pseudo_mask.sum(0).tolist() == [4, 4]
    assert int(loss.last_epoch) == 3
    # a later call of an old epoch changes nothing
    before = loss.pseudo_mask.clone()
    loss(logits_by_epoch[0][batches[0]], obs[batches[0]], index=batches[0], epoch=1)
    assert torch.equal(loss.pseudo_mask, before)


def test_em_apl_no_round_without_a_previous_epoch_or_with_auto_update_off():
    x = torch.tensor([[-3.0], [2.0]])
    obs = torch.zeros(2, 1)
    loss = AsymmetricPseudoLabelLoss(num_images=2, num_classes=1, num_epochs=3, warmup_epochs=1, neg_proportion=1.0)
    loss(x, obs, index=torch.arange(2), epoch=2)  # first call ever, already past warm-up
    assert not loss.pseudo_mask.any()  # nothing was recorded before it
    loss(x, obs, index=torch.arange(2), epoch=3)
    assert loss.pseudo_mask[:, 0].tolist() == [True, False]  # floor(1 * 2 / 2) = 1: the lowest
    off = AsymmetricPseudoLabelLoss(num_images=2, num_classes=1, num_epochs=3, warmup_epochs=1,
                                    neg_proportion=1.0, auto_update=False)
    for e in range(3):
        off(x, obs, index=torch.arange(2), epoch=e)
    assert not off.pseudo_mask.any()


def test_em_apl_config_bounds():
    with pytest.raises(ConfigError):
        AsymmetricPseudoLabelLoss(num_images=2, num_classes=1, num_epochs=3, warmup_epochs=3)
    AsymmetricPseudoLabelLoss(num_images=2, num_classes=1, num_epochs=3, warmup_epochs=0)  # 0 is allowed
    with pytest.raises(ConfigError):
        AsymmetricPseudoLabelLoss(num_images=2, num_classes=1, neg_proportion=1.01)


def test_em_apl_after_module_double():
    loss = AsymmetricPseudoLabelLoss(num_images=2, num_classes=2).double()
    x = torch.tensor([[0.3, -1.2], [2.0, 0.0]], dtype=DT)
    loss(x, torch.zeros(2, 2, dtype=DT), index=torch.arange(2), epoch=0)
    assert loss.recorded_prob.dtype == torch.float64
    assert_close(loss.recorded_prob, 1.0 / (1.0 + torch.exp(-x)), tol=1e-15)
