"""Single-positive / partial-label losses: hand-computed values on 1x3 examples.

Running example: logits [0, ln 3, -ln 3]  ->  p = [0.5, 0.75, 0.25].
"""
import math

import pytest
import torch

from sigrl.errors import ConfigError
from sigrl.losses import LOSSES, build_loss
from sigrl.losses.spml import (
    AsymmetricPseudoLabelLoss,
    EntropyMaximizationLoss,
    LargeLossRejectionLoss,
    OnlineLabelEstimationLoss,
)

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
LN43 = math.log(4 / 3)  # -log 0.75
H75 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of p = 0.75 (and 0.25)


def logits(requires_grad=False):
    return torch.tensor([[0.0, LN3, -LN3]], dtype=torch.float64, requires_grad=requires_grad)


POS_UNOBS_NEG = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
POS_UNOBS_UNOBS = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)


def test_registry_names_and_errors():
    assert {"full", "an", "wan", "epr", "role", "em", "em_apl", "ll_r", "vlpl", "ranking"} <= set(LOSSES)  # others join
    with pytest.raises(ConfigError, match="choose one of"):
        build_loss("bce_typo")
    with pytest.raises(ConfigError, match="alpha"):
        build_loss("em", alpha=-1)
    with pytest.raises(ConfigError, match="valid options"):
        build_loss("an", gamma=2)
    with pytest.raises(ConfigError):
        build_loss("epr")  # expected_num_pos is required
    with pytest.raises(ConfigError):
        build_loss("ll_r", delta_rel=1.5)


def test_full_ignores_unknown_entries():
    x = logits(True)
    loss = build_loss("full")(x, POS_UNOBS_NEG)
    assert loss.item() == pytest.approx((LN2 + LN43) / 2)  # mean over the 2 known entries
    loss.backward()
    assert x.grad[0, 1] == 0  # the unknown entry gets no gradient
    # its value does not matter
    y = torch.tensor([[0.0, 50.0, -LN3]], dtype=torch.float64)
    assert build_loss("full")(y, POS_UNOBS_NEG).item() == pytest.approx((LN2 + LN43) / 2)


def test_full_soft_targets_weight_by_magnitude():
    target = torch.tensor([[0.5, 0.0, -1.0]], dtype=torch.float64)
    assert build_loss("full")(logits(), target).item() == pytest.approx((0.5 * LN2 + LN43) / 2)


def test_an():
    # -log 0.5, -log(1 - 0.75), -log(1 - 0.25) over B*C = 3
    assert build_loss("an")(logits(), POS_UNOBS_NEG).item() == pytest.approx((LN2 + LN4 + LN43) / 3)


def test_wan_downweights_assumed_negatives_only():
    # C = 3 -> gamma = 1/2 on the unobserved entry; the observed negative keeps weight 1
    value = build_loss("wan")(logits(), POS_UNOBS_NEG).item()
    assert value == pytest.approx((LN2 + 0.5 * LN4 + LN43) / 3)
    assert build_loss("wan", neg_weight=0.0)(logits(), POS_UNOBS_NEG).item() == pytest.approx((LN2 + LN43) / 3)


def test_epr():
    # observed terms (-log .5, -log .75)/3  +  (0.5 + 0.75 + 0.25 - 1)^2 / 3^2
    value = build_loss("epr", expected_num_pos=1.0)(logits(), POS_UNOBS_NEG).item()
    assert value == pytest.approx((LN2 + LN43) / 3 + 0.25 / 9)


def test_em_value_and_gradient_toward_half():
    value = build_loss("em", alpha=0.1)(logits(), POS_UNOBS_NEG).item()
    assert value == pytest.approx((LN2 - 0.1 * H75 + LN43) / 3)
    # unobserved entries: gradient descent moves p toward 0.5 from either side
    x = torch.tensor([[2.0, -2.0, 0.3, -0.3]], requires_grad=True)
    EntropyMaximizationLoss(alpha=1.0)(x, torch.zeros(1, 4)).backward()
    assert x.grad[0, 0] > 0 and x.grad[0, 2] > 0  # p > 0.5: descent lowers the logit
    assert x.grad[0, 1] < 0 and x.grad[0, 3] < 0  # p < 0.5: descent raises the logit
    # whereas AN pushes every unobserved entry down
    x.grad = None
    build_loss("an")(x, torch.zeros(1, 4)).backward()
    assert (x.grad > 0).all()


def test_ll_r_hand_value():
    loss = build_loss("ll_r", delta_rel=0.5)
    an = (LN2 + LN4 + LN43) / 3
    assert loss(logits(), POS_UNOBS_UNOBS, epoch=0).item() == pytest.approx(an)  # rate 0
    # epoch 1: rate 0.5 of 2 unobserved -> reject 1, the largest (-log(1-0.75) = ln 4)
    assert loss(logits(), POS_UNOBS_UNOBS, epoch=1).item() == pytest.approx((LN2 + LN43) / 3)
    # LL-Ct: the rejected entry is relabelled positive (-log 0.75) instead
    ct = build_loss("ll_r", delta_rel=0.5, correct=True)
    assert ct(logits(), POS_UNOBS_UNOBS, epoch=1).item() == pytest.approx((LN2 + LN43 + LN43) / 3)
    with pytest.raises(ValueError, match="epoch"):
        loss(logits(), POS_UNOBS_UNOBS)


@pytest.mark.parametrize("epoch", [0, 1, 3, 7])
def test_ll_r_rejects_stated_fraction_of_largest_unobserved_losses(epoch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    obs = torch.zeros(6, 5, dtype=torch.float64)
    obs[torch.arange(6), torch.randint(0, 5, (6,), generator=gen)] = 1
    delta = 0.05
    rate = min(1.0, epoch * delta)
    # reference computed here from the definition: -log(1 - p) on unobserved, sorted
    p = 1 / (1 + torch.exp(-x))
    unobs_losses = sorted((-torch.log(1 - p))[obs == 0].tolist(), reverse=True)
    k = math.ceil(round(rate * len(unobs_losses), 9))
    an_total = build_loss("an")(x, obs).item() * 30
    llr_total = build_loss("ll_r", delta_rel=delta)(x, obs, epoch=epoch).item() * 30
    assert LargeLossRejectionLoss(delta_rel=delta).rejection_rate(epoch) == pytest.approx(rate)
    assert an_total - llr_total == pytest.approx(sum(unobs_losses[:k]))


def test_role_hand_value_and_state():
    loss = OnlineLabelEstimationLoss(num_images=1, num_classes=3, expected_num_pos=1.0)
    with torch.no_grad():
        loss.label_logits.copy_(torch.tensor([[LN3, 0.0, -LN3]]))  # q = [.75, .5, .25]
    loss.seen.fill_(True)
    x = logits(True).float()
    x.retain_grad()
    value = loss(x, POS_UNOBS_UNOBS.float(), index=torch.tensor([0]))
    soft_a = 0.5 * (LN43 + LN4)  # BCE(0.75 | target 0.5) = BCE(0.5 | target 0.75) up to swap
    soft_c = 0.25 * LN4 + 0.75 * LN43  # BCE(0.25 | target 0.25)
    classifier = LN2 + LN2 + soft_a + soft_c  # obs pos, BCE(p=.5|q=.75)=ln2, ...
    estimator = LN43 + soft_a + LN2 + soft_c
    expected = 0.5 * ((classifier + estimator) / 3 + 2 * 0.25 / 9)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert loss.label_logits.grad is not None and loss.label_logits.grad.abs().sum() > 0
    assert set(loss.state_dict()) == {"label_logits", "seen"}


def test_role_initialises_observed_labels_on_first_sight():
    loss = build_loss("role", num_images=4, num_classes=3, expected_num_pos=1.0)
    obs = torch.tensor([[0.0, 1.0, -1.0]])
    loss(torch.zeros(1, 3), obs, index=torch.tensor([2]))
    est = loss.estimated_labels()
    assert est[2, 1].item() == pytest.approx(0.995, abs=1e-4)
    assert est[2, 2].item() == pytest.approx(0.005, abs=1e-4)
    assert 0.4 - 1e-6 <= est[2, 0].item() <= 0.6 + 1e-6
    assert bool(loss.seen[2]) and not bool(loss.seen[0])
    with pytest.raises(ValueError, match="index"):
        loss(torch.zeros(1, 3), obs)


def test_em_apl_hand_value_with_a_pseudo_negative():
    loss = AsymmetricPseudoLabelLoss(num_images=1, num_classes=3, alpha=0.1, beta=0.5, auto_update=False)
    loss.pseudo_mask[0, 2] = True
    loss.pseudo_target[0, 2] = 0.25
    value = loss(logits().float(), POS_UNOBS_UNOBS.float(), index=torch.tensor([0]))
    apl = 0.5 * (0.25 * LN4 + 0.75 * LN43)
    assert value.item() == pytest.approx((LN2 - 0.1 * H75 + apl) / 3, rel=1e-5)
    # without index (no per-image state) it is plain EM
    em = EntropyMaximizationLoss(alpha=0.1)(logits(), POS_UNOBS_UNOBS).item()
    assert loss(logits().float(), POS_UNOBS_UNOBS.float()).item() == pytest.approx(em, rel=1e-5)


def test_em_apl_labels_lowest_predictions_after_warmup():
    loss = build_loss("em_apl", num_images=4, num_classes=1, num_epochs=3, warmup_epochs=1, neg_proportion=1.0)
    # 2 rounds (epochs 1 and 2) -> floor(1.0 * 4 / 2) = 2 negatives per round
    x = torch.tensor([[0.5], [-2.0], [1.0], [-1.0]])
    obs = torch.zeros(4, 1)
    idx = torch.arange(4)
    loss(x, obs, index=idx, epoch=0)
    assert not loss.pseudo_mask.any()  # warm-up: nothing labelled yet
    loss(x, obs, index=idx, epoch=1)
    assert loss.pseudo_mask[:, 0].tolist() == [False, True, False, True]  # the two lowest
    assert loss.pseudo_target[1, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item())
    loss(x, obs, index=idx, epoch=1)  # same epoch again: no new round
    assert int(loss.pseudo_mask.sum()) == 2
    loss(x, obs, index=idx, epoch=2)
    assert int(loss.pseudo_mask.sum()) == 4
    # observed entries are never pseudo-labelled
    other = AsymmetricPseudoLabelLoss(num_images=2, num_classes=2, num_epochs=2, warmup_epochs=1, neg_proportion=1.0)
    added = other.assign_pseudo_labels(torch.tensor([[0.1, 0.2], [0.3, 0.4]]), torch.tensor([[1, 0], [0, -1]]))
    assert added == 2
    assert other.pseudo_mask.tolist() == [[False, True], [True, False]]


@pytest.mark.parametrize("name", ["full", "an", "wan", "epr", "role", "em", "em_apl", "ll_r"])
@pytest.mark.parametrize("kind", ["no_positives", "all_unobserved", "extreme"])
def test_no_nan(name, kind):
    options = {"epr": {"expected_num_pos": 1.5}, "role": {"num_images": 3, "num_classes": 4, "expected_num_pos": 1.5},
               "em_apl": {"num_images": 3, "num_classes": 4}}.get(name, {})
    loss = build_loss(name, **options)
    x = torch.tensor([[100.0, -100.0, 0.0, 3.0]] * 3, requires_grad=True) if kind == "extreme" else torch.randn(3, 4, requires_grad=True)
    obs = torch.zeros(3, 4)
    if kind == "no_positives":
        obs[:, :2] = -1
    if kind == "extreme":
        obs[:, 0] = -1
        obs[:, 1] = 1
    value = loss(x, obs, index=torch.arange(3), epoch=5)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_context_keys_reach_only_losses_that_take_them():
    an = build_loss("an", num_images=10, num_classes=3, num_epochs=4)
    assert an(logits(), POS_UNOBS_NEG).item() == pytest.approx((LN2 + LN4 + LN43) / 3)
    apl = build_loss("em_apl", num_images=10, num_classes=3, num_epochs=4, warmup_epochs=2)
    assert apl.num_epochs == 4 and apl.pseudo_mask.shape == (10, 3)
    with pytest.raises(ConfigError, match="needs option"):
        build_loss("role", num_images=10, num_classes=3)  # expected_num_pos missing


def test_ranking_is_registered():
    import sigrl.losses.ranking as ranking
    from sigrl.losses import RankingLoss

    assert RankingLoss is ranking.RankingLoss
    assert "ranking" in LOSSES


# ----------------------------------------------------------------- contracts (messages, bounds,
# defaults, state format): each named in the docstrings; written to kill surviving mutants of
# benchmarks/bench_mutation.py.
from sigrl.losses.spml import (  # noqa: E402
    AssumeNegativeLoss,
    ExpectedPositiveRegularizationLoss,
    FullLabelLoss,
    WeightedAssumeNegativeLoss,
)


@pytest.mark.parametrize("build,message", [
    (lambda: WeightedAssumeNegativeLoss(neg_weight=-1), r"^wan: neg_weight must be a finite number >= 0"),
    (lambda: ExpectedPositiveRegularizationLoss(expected_num_pos=-0.5), r"^epr: expected_num_pos must be"),
    (lambda: EntropyMaximizationLoss(alpha=float("nan")), r"^em: alpha must be"),
    (lambda: AsymmetricPseudoLabelLoss(2, 2, alpha=-1), r"^em_apl: alpha must be"),
    (lambda: AsymmetricPseudoLabelLoss(2, 2, beta=-1), r"^em_apl: beta must be"),
    (lambda: AsymmetricPseudoLabelLoss(2, 2, neg_proportion=1.5), r"^em_apl: neg_proportion must be in \[0, 1\]"),
    (lambda: AsymmetricPseudoLabelLoss(0, 2), r"^em_apl: num_images and num_classes must be >= 1"),
    (lambda: AsymmetricPseudoLabelLoss(2, 0), r"^em_apl: num_images and num_classes must be >= 1"),
    (lambda: AsymmetricPseudoLabelLoss(2, 2, num_epochs=3, warmup_epochs=3), r"^em_apl: need 0 <= warmup_epochs"),
    (lambda: LargeLossRejectionLoss(delta_rel=-0.1), r"^ll_r: delta_rel must be in \[0, 1\]"),
    (lambda: OnlineLabelEstimationLoss(2, 2, expected_num_pos=-1), r"^role: expected_num_pos must be"),
    (lambda: OnlineLabelEstimationLoss(0, 2, 1.0), r"^role: num_images and num_classes must be >= 1"),
    (lambda: OnlineLabelEstimationLoss(2, 0, 1.0), r"^role: num_images and num_classes must be >= 1"),
    (lambda: OnlineLabelEstimationLoss(2, 2, 1.0, init_pos=0.5), r"^role: init_pos must be in \(0.5, 1\)"),
    (lambda: OnlineLabelEstimationLoss(2, 2, 1.0, init_pos=1.0), r"^role: init_pos"),
    (lambda: OnlineLabelEstimationLoss(2, 2, 1.0, init_pos=1.5), r"^role: init_pos"),
    (lambda: OnlineLabelEstimationLoss(2, 2, 1.0, init_width=0.5), r"^role: init_width must be in \[0, 0.5\)"),
    (lambda: OnlineLabelEstimationLoss(2, 2, 1.0, init_width=1.0), r"^role: init_width"),
])
def test_config_errors_name_the_loss_and_the_option(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_bounds_that_are_allowed():
    LargeLossRejectionLoss(delta_rel=0.0)  # no rejection: AN
    LargeLossRejectionLoss(delta_rel=1.0)
    AsymmetricPseudoLabelLoss(2, 2, neg_proportion=0.0)
    OnlineLabelEstimationLoss(2, 1, 1.0)  # one class is fine
    role = OnlineLabelEstimationLoss(2, 3, 1.0, init_width=0.0)  # no randomness: all estimates 0.5
    assert torch.equal(role.label_logits.detach(), torch.zeros(2, 3))


def test_documented_defaults():
    apl = AsymmetricPseudoLabelLoss(num_images=1, num_classes=1)
    assert (apl.num_epochs, apl.warmup_epochs, apl.alpha, apl.beta, apl.neg_proportion, apl.auto_update) == (
        10, 5, 0.1, 0.9, 0.9, True)
    assert EntropyMaximizationLoss().alpha == 0.1
    assert LargeLossRejectionLoss().delta_rel == 0.002 and LargeLossRejectionLoss().correct is False
    default = OnlineLabelEstimationLoss(3, 4, 1.0).label_logits.detach()
    assert torch.equal(default, OnlineLabelEstimationLoss(3, 4, 1.0, seed=0).label_logits.detach())
    assert math.log(0.995 / 0.005) == pytest.approx(OnlineLabelEstimationLoss(3, 4, 1.0).init_logit)


def test_state_buffers_have_the_saved_dtypes():
    apl = AsymmetricPseudoLabelLoss(num_images=3, num_classes=2)
    dtypes = {k: v.dtype for k, v in apl.state_dict().items()}
    assert dtypes == {"pseudo_mask": torch.bool, "pseudo_target": torch.float32, "recorded_prob": torch.float32,
                      "recorded_observed": torch.int8, "recorded": torch.bool, "last_epoch": torch.long}
    assert int(apl.last_epoch) == -1


def test_input_errors_are_named():
    with pytest.raises(ValueError, match=r"^logits must be \(B, C\), got shape \(3,\)"):
        AssumeNegativeLoss()(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"^observed \(2, 3\) must have the shape of logits \(2, 4\)"):
        AssumeNegativeLoss()(torch.zeros(2, 4), torch.zeros(2, 3))
    role = OnlineLabelEstimationLoss(num_images=4, num_classes=3, expected_num_pos=1.0)
    apl = AsymmetricPseudoLabelLoss(num_images=4, num_classes=3)
    for name, loss in (("role", role), ("em_apl", apl)):
        with pytest.raises(ValueError, match=rf"^{name}: built for 3 classes, got logits with 5"):
            loss(torch.zeros(2, 5), torch.zeros(2, 5), index=torch.arange(2))
        with pytest.raises(ValueError, match=rf"^{name}: index has 2 entries for a batch of 1"):
            loss(torch.zeros(1, 3), torch.zeros(1, 3), index=torch.arange(2))
        for bad in ([0, 4], [4], [-1, 0]):
            with pytest.raises(ValueError, match=rf"^{name}: index out of range \[0, 4\)"):
                loss(torch.zeros(len(bad), 3), torch.zeros(len(bad), 3), index=torch.tensor(bad))
        loss(torch.zeros(2, 3), torch.zeros(2, 3), index=torch.tensor([3, 0]), epoch=0)  # the last image is fine
    with pytest.raises(ValueError, match=r"^role keeps per-image state"):
        role(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"^ll_r needs the epoch"):
        LargeLossRejectionLoss()(torch.zeros(1, 3), torch.zeros(1, 3))


def test_one_entry_batches_and_empty_batches():
    x = torch.tensor([[0.7]], dtype=torch.float64)
    unobs, pos = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    p = 1 / (1 + math.exp(-0.7))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert AssumeNegativeLoss()(x, unobs).item() == pytest.approx(-math.log(1 - p))  # / (B*C) = 1
    assert EntropyMaximizationLoss(alpha=0.5)(x, unobs).item() == pytest.approx(-0.5 * h)
    assert LargeLossRejectionLoss()(x, pos, epoch=3).item() == pytest.approx(-math.log(p))
    assert WeightedAssumeNegativeLoss()(x, pos).item() == pytest.approx(-math.log(p))
    apl = AsymmetricPseudoLabelLoss(num_images=1, num_classes=1, alpha=0.5)
    assert apl(x, unobs, index=torch.tensor([0]), epoch=0).item() == pytest.approx(-0.5 * h)
    assert FullLabelLoss()(x, pos).item() == pytest.approx(-math.log(p))  # mean over 1 known entry
    two = torch.tensor([[0.7, -0.2]], dtype=torch.float64)
    assert FullLabelLoss()(two, torch.tensor([[0.0, -1.0]], dtype=torch.float64)).item() == pytest.approx(
        -math.log(1 - 1 / (1 + math.exp(0.2))))
    # WAN with C = 2: gamma = 1 / (C - 1) = 1, i.e. AN
    obs2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert WeightedAssumeNegativeLoss()(two, obs2).item() == pytest.approx(AssumeNegativeLoss()(two, obs2).item())
    role = OnlineLabelEstimationLoss(num_images=1, num_classes=1, expected_num_pos=1.0, init_width=0.0)
    role.seen.fill_(True)  # q = 0.5
    q = 0.5
    want = 0.5 * ((q * -math.log(p) + (1 - q) * -math.log(1 - p)) + (p * math.log(2) + (1 - p) * math.log(2))
                  + (p - 1) ** 2 + (q - 1) ** 2)
    assert role(x, unobs, index=torch.tensor([0])).item() == pytest.approx(want)
    empty = torch.zeros(0, 3, requires_grad=True)
    v = ExpectedPositiveRegularizationLoss(expected_num_pos=1.0)(empty, torch.zeros(0, 3))
    assert v.item() == 0.0
    v.backward()


def test_loss_dtype_follows_the_logits():
    x = torch.randn(2, 3, dtype=torch.float32)
    obs64 = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert FullLabelLoss()(x, obs64).dtype == torch.float32
    # ROLE: float32 estimates, float64 logits -> computed in float64 from the float32 values
    role = OnlineLabelEstimationLoss(num_images=2, num_classes=3, expected_num_pos=1.0)
    role.seen.fill_(True)
    x64 = torch.randn(2, 3, dtype=torch.float64)
    got = role(x64, obs64, index=torch.arange(2)).item()
    ref = OnlineLabelEstimationLoss(num_images=2, num_classes=3, expected_num_pos=1.0).double()
    ref.seen.fill_(True)
    assert got == pytest.approx(ref(x64, obs64, index=torch.arange(2)).item(), rel=1e-13, abs=1e-13)


def test_em_apl_round_uses_the_recorded_images_rows():
    """Only images 3..5 were seen in epoch 0: the epoch-1 round labels among those rows."""
    apl = AsymmetricPseudoLabelLoss(num_images=6, num_classes=1, num_epochs=2, warmup_epochs=1, neg_proportion=1.0)
    idx = torch.tensor([3, 4, 5])
    x = torch.tensor([[2.0], [-1.0], [0.5]])
    apl(x, torch.zeros(3, 1), index=idx, epoch=0)
    apl(x, torch.zeros(3, 1), index=idx, epoch=1)  # U = 3, one round -> all 3 recorded rows
    assert apl.pseudo_mask[:, 0].tolist() == [False, False, False, True, True, True]
    assert apl.pseudo_target[4, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item())


def test_extra_repr_lists_the_hyper_parameters():
    assert "neg_weight=0.5" in repr(WeightedAssumeNegativeLoss(neg_weight=0.5))
    apl = AsymmetricPseudoLabelLoss(num_images=2, num_classes=2, alpha=0.2, beta=0.3)
    assert apl.extra_repr() == "alpha=0.2, beta=0.3, neg_proportion=0.9, warmup_epochs=5, num_epochs=10"
    assert FullLabelLoss().extra_repr() == "" and "FullLabelLoss()" in repr(FullLabelLoss())  # no hparams
    assert "expected_num_pos=1.5" in repr(ExpectedPositiveRegularizationLoss(expected_num_pos=1.5))


def test_role_estimator_optimiser_group():
    role = OnlineLabelEstimationLoss(num_images=2, num_classes=3, expected_num_pos=1.0)
    assert role.lr_mult == 10.0 and role.estimator_weight_decay == 0.0  # documented defaults
    (group,) = role.param_groups(lr=1e-3, weight_decay=0.5)  # the head's weight decay is not used
    assert group["params"] == [role.label_logits] and group["name"] == "role_estimator"
    assert group["lr"] == pytest.approx(1e-2) and group["weight_decay"] == 0.0
    tuned = OnlineLabelEstimationLoss(2, 3, 1.0, lr_mult=0.5, estimator_weight_decay=1e-4)
    (group,) = tuned.param_groups(lr=2e-3)
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 1e-4
    torch.optim.Adam(tuned.param_groups(lr=1e-3))  # a valid torch param group
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match=r"^role: lr_mult must be a finite number > 0"):
            OnlineLabelEstimationLoss(2, 3, 1.0, lr_mult=bad)
    with pytest.raises(ConfigError, match=r"^role: estimator_weight_decay must be a finite number >= 0"):
        OnlineLabelEstimationLoss(2, 3, 1.0, estimator_weight_decay=-1e-4)
