"""VLPL pseudo labels and loss; SST and CLSL label recovery — hand-computed tiny cases."""
import math

import pytest
import torch

from sigrl.errors import ConfigError
from sigrl.losses import build_loss
from sigrl.methods import RECOVERIES, LabelRecovery, build_recovery
from sigrl.methods.clsl import CollaborativeLabelRecovery, linear_schedule
from sigrl.methods.sst import StructuredSemanticTransfer, label_cooccurrence
from sigrl.methods.vlpl import VLPLLoss, vlpl_pseudo_labels

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
LN43 = math.log(4 / 3)
H25 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))


def logits():
    return torch.tensor([[0.0, LN3, -LN3]])  # p = [0.5, 0.75, 0.25]


# ------------------------------------------------------------------ VLPL pseudo labels
def test_vlpl_thresholds():
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    unobs = torch.zeros(1, 3)
    assert vlpl_pseudo_labels(scores, unobs, pos_threshold=0.6).tolist() == [[1, 0, 0]]
    assert vlpl_pseudo_labels(scores, unobs, pos_threshold=0.6, neg_threshold=0.2).tolist() == [[1, 0, -1]]
    assert vlpl_pseudo_labels(scores, unobs, pos_threshold=0.6, neg_fraction=1 / 3).tolist() == [[1, 0, -1]]
    # strictly above the threshold
    assert vlpl_pseudo_labels(scores, unobs, pos_threshold=0.9).tolist() == [[0, 0, 0]]


def test_vlpl_never_overwrites_observed():
    scores = torch.tensor([[0.9, 0.05, 0.95, 0.01]])
    obs = torch.tensor([[-1.0, 1.0, 0.0, 0.0]])
    out = vlpl_pseudo_labels(scores, obs, pos_threshold=0.5, neg_threshold=0.1, neg_fraction=0.5)
    assert out.tolist() == [[-1, 1, 1, -1]]


def test_vlpl_temperature_softmax():
    # softmax([30, 28, 10]) ~ [e^2/(1+e^2), 1/(1+e^2), ~0] = [0.881, 0.119, 1.8e-9]
    scores = torch.tensor([[0.30, 0.28, 0.10]])
    out = vlpl_pseudo_labels(scores, torch.zeros(1, 3), pos_threshold=0.3, temperature=0.01)
    assert out.tolist() == [[1, 0, 0]]
    out = vlpl_pseudo_labels(scores, torch.zeros(1, 3), pos_threshold=0.1, temperature=0.01)
    assert out.tolist() == [[1, 1, 0]]


def test_vlpl_bad_options():
    s, o = torch.zeros(1, 3), torch.zeros(1, 3)
    with pytest.raises(ConfigError):
        vlpl_pseudo_labels(s, o, pos_threshold=0.5, neg_threshold=0.6)
    with pytest.raises(ConfigError):
        vlpl_pseudo_labels(s, o, pos_threshold=0.5, neg_fraction=2.0)
    with pytest.raises(ConfigError):
        build_loss("vlpl", unobserved="ignore")


# ------------------------------------------------------------------ VLPL loss
def test_vlpl_loss_hand_values():
    obs = torch.tensor([[1.0, 0.0, 0.0]])
    pseudo = torch.tensor([[1.0, 1.0, 0.0]])  # entry 0 is observed: its pseudo label is unused
    loss = VLPLLoss(alpha=0.1, beta_pos=0.7, smoothing=0.1)
    pos_pl = 0.7 * (0.9 * LN43 + 0.1 * LN4)  # p = 0.75 with smoothed target 0.9
    assert loss(logits(), obs, pseudo=pseudo).item() == pytest.approx((LN2 + pos_pl - 0.1 * H25) / 3, rel=1e-5)
    an = VLPLLoss(alpha=0.1, beta_pos=0.7, unobserved="an")
    assert an(logits(), obs, pseudo=pseudo).item() == pytest.approx((LN2 + pos_pl + LN43) / 3, rel=1e-5)
    # pseudo negative, weight beta_neg, smoothed target 0.1: p = 0.25
    neg = VLPLLoss(alpha=0.1, beta_pos=0.7, beta_neg=0.5)
    pseudo_neg = torch.tensor([[0.0, 1.0, -1.0]])
    neg_pl = 0.5 * (0.1 * LN4 + 0.9 * LN43)
    assert neg(logits(), obs, pseudo=pseudo_neg).item() == pytest.approx((LN2 + pos_pl + neg_pl) / 3, rel=1e-5)


def test_vlpl_loss_stored_labels_follow_index_and_state_dict():
    loss = build_loss("vlpl", num_images=3, num_classes=3)
    targets = vlpl_pseudo_labels(
        torch.tensor([[0.1, 0.9, 0.1], [0.1, 0.1, 0.1], [0.9, 0.9, 0.9]]), torch.zeros(3, 3), pos_threshold=0.5
    )
    loss.set_pseudo_labels(targets)
    obs = torch.tensor([[1.0, 0.0, 0.0]])
    direct = loss(logits(), obs, pseudo=targets[:1]).item()
    assert loss(logits(), obs, index=torch.tensor([0])).item() == pytest.approx(direct)
    assert loss(logits(), obs, index=torch.tensor([1])).item() != pytest.approx(direct)
    state = loss.state_dict()
    assert state["pseudo_labels"].tolist() == targets.to(torch.int8).tolist()
    fresh = build_loss("vlpl", num_images=3, num_classes=3)
    fresh.load_state_dict(state)
    assert fresh(logits(), obs, index=torch.tensor([0])).item() == pytest.approx(direct)


def test_vlpl_loss_no_nan_without_positives():
    x = torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True)
    value = build_loss("vlpl")(x, torch.zeros(1, 3), pseudo=torch.tensor([[0.0, 1.0, -1.0]]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ SST
# 4 images, 3 classes. P(1|0) = 2/3 (images 0, 1 of the 3 where 0+ and 1 known),
# P(2|0) = 1/2 (image 2 of images 0, 2), P(2|1) = 0/1, P(0|1) = 2/2, P(1|2) = 0/1, P(0|2) = 1/1.
OBS = torch.tensor([[1, 1, -1], [1, 1, 0], [1, -1, 1], [1, 0, 0]], dtype=torch.float32)


def test_label_cooccurrence_hand_counts():
    cond = label_cooccurrence(OBS)
    expected = torch.tensor([[0, 2 / 3, 1 / 2], [1, 0, 0], [1, 0, 0]])
    assert torch.allclose(cond, expected)
    # min_support: P(2|1) rests on a single image -> 0 either way; P(1|0) on 3 images survives 3
    assert label_cooccurrence(OBS, min_support=3)[0, 1] == pytest.approx(2 / 3)
    assert label_cooccurrence(OBS, min_support=3)[0, 2] == 0


def test_sst_intra_threshold_respected():
    sst = StructuredSemanticTransfer(intra_threshold=0.6, use_cross=False, start_epoch=0)
    out = sst.update(0, None, None, OBS)
    # image 3: P(1|0) = 2/3 >= 0.6 -> +1; P(2|0) = 1/2 < 0.6 -> stays 0
    assert out[3].tolist() == [1, 1, 0]
    # image 1, class 2: max(P(2|0), P(2|1)) = 1/2 -> stays 0
    assert out[1].tolist() == [1, 1, 0]
    assert sst.stats["intra"] == 1
    lower = StructuredSemanticTransfer(intra_threshold=0.5, use_cross=False, start_epoch=0).update(0, None, None, OBS)
    assert lower[3].tolist() == [1, 1, 1] and lower[1].tolist() == [1, 1, 1]
    # "mean" aggregation: image 1, class 2 -> (P(2|0) + P(2|1)) / 2 = 1/4 < 0.5
    mean = StructuredSemanticTransfer(intra_threshold=0.5, use_cross=False, start_epoch=0, aggregate="mean")
    assert mean.update(0, None, None, OBS)[1].tolist() == [1, 1, 0]


def test_sst_cross_image_prototype():
    # class 2's only known positive is image 2 with feature (1, 0)
    feats = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    sst = StructuredSemanticTransfer(cross_threshold=0.9, use_intra=False, start_epoch=0)
    out = sst.update(0, None, feats, OBS)
    assert out[1, 2] == 1  # same direction as image 2 -> cos 1
    assert out[3, 2] == 0  # orthogonal -> 0
    # class 1's known positives are images 0, 1: mean of (0,1) and (1,0) = (.5, .5); image 3 (0,1) scores .5
    assert out[3, 1] == 0
    normed = StructuredSemanticTransfer(cross_threshold=0.7, use_intra=False, start_epoch=0, normalize_prototype=True)
    assert normed.update(0, None, feats, OBS)[3, 1] == 1  # cos((0,1), (.5,.5)) = 0.707


def test_sst_class_specific_features():
    feats = torch.zeros(4, 3, 2)
    feats[:, 2] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    feats[:, :2] = 1.0
    out = StructuredSemanticTransfer(cross_threshold=0.9, use_intra=False, start_epoch=0).update(0, None, feats, OBS)
    assert out[1, 2] == 1 and out[3, 2] == 0


def test_sst_before_start_epoch_and_observed_never_changed():
    sst = StructuredSemanticTransfer(intra_threshold=0.0, cross_threshold=-1.0, start_epoch=2)
    feats = torch.randn(4, 5)
    assert torch.equal(sst.update(1, None, feats, OBS), OBS)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        obs = torch.randint(-1, 2, (12, 5), generator=gen).float()
        out = sst.update(2, None, torch.randn(12, 4, generator=gen), obs)
        known = obs != 0
        assert torch.equal(out[known], obs[known])
        assert set(out[~known].unique().tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------ CLSL
def test_linear_schedule_and_thresholds_monotone():
    assert linear_schedule(0, 0.9, 0.7, start_epoch=2, ramp_epochs=4) == 0.9
    assert linear_schedule(4, 0.9, 0.7, start_epoch=2, ramp_epochs=4) == pytest.approx(0.8)
    assert linear_schedule(50, 0.9, 0.7, start_epoch=2, ramp_epochs=4) == pytest.approx(0.7)
    rec = CollaborativeLabelRecovery(pos_start=0.95, pos_end=0.7, neg_start=0.01, neg_end=0.1, start_epoch=1, ramp_epochs=5)
    pos = [rec.thresholds(e)[0] for e in range(12)]
    neg = [rec.thresholds(e)[1] for e in range(12)]
    assert all(a >= b for a, b in zip(pos, pos[1:])) and pos[-1] == pytest.approx(0.7)
    assert all(a <= b for a, b in zip(neg, neg[1:])) and neg[-1] == pytest.approx(0.1)


def test_clsl_thresholds_respected_and_observed_kept():
    probs = torch.tensor([[0.96, 0.9, 0.5, 0.005], [0.99, 0.2, 0.8, 0.02]])
    obs = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0]])
    rec = CollaborativeLabelRecovery(
        pos_start=0.95, pos_end=0.75, neg_start=0.01, neg_end=0.05, start_epoch=1, ramp_epochs=2, scores_are_logits=False
    )
    assert torch.equal(rec.update(0, probs, None, obs), obs)  # before start: nothing recovered
    out = rec.update(1, probs, None, obs)  # thresholds 0.95 / 0.01
    assert out.tolist() == [[1, 0, 0, -1], [-1, 1, 0, 0]]
    out = rec.update(3, probs, None, obs)  # floor: 0.75 / 0.05
    assert out.tolist() == [[1, 1, 0, -1], [-1, 1, 1, -1]]
    assert rec.stats["recovered_pos"] == 3 and rec.stats["recovered_neg"] == 2
    soft = CollaborativeLabelRecovery(pos_start=0.75, pos_end=0.75, start_epoch=0, scores_are_logits=False, soft=True)
    assert soft.update(0, probs, None, obs)[0].tolist() == pytest.approx([0.96, 0.9, 0, 0])


def test_clsl_recovers_more_as_scores_become_confident():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 6, generator=gen)
    obs = torch.zeros(40, 6)
    rec = build_recovery("clsl_threshold", pos_start=0.9, pos_end=0.9, start_epoch=0)
    counts = []
    for sharpness in (0.5, 1.0, 2.0, 4.0):
        rec.update(0, z * sharpness, None, obs)
        counts.append(rec.stats["recovered_pos"])
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_recovery_registry():
    # the papers' names are the reference losses (loss.name sst / clsl); ours are variants
    assert set(RECOVERIES) == {"sst_counted", "clsl_threshold"}
    assert isinstance(build_recovery("sst_counted"), LabelRecovery)
    with pytest.raises(ConfigError, match="choose one of"):
        build_recovery("sst")
    with pytest.raises(ConfigError, match="choose one of"):
        build_recovery("nope")
    with pytest.raises(ConfigError, match="valid options"):
        build_recovery("clsl_threshold", threshold=0.5)
    with pytest.raises(ConfigError):
        build_recovery("clsl_threshold", pos_start=0.5, pos_end=0.9)  # the floor must not exceed the start
    with pytest.raises(ConfigError):
        build_recovery("sst_counted", aggregate="median")


def test_recovered_targets_train_with_full_loss():
    """The trainer's contract: targets from a recovery feed the 0-ignoring BCE."""
    probs = torch.tensor([[0.96, 0.5, 0.2]])
    targets = CollaborativeLabelRecovery(pos_start=0.95, start_epoch=0, scores_are_logits=False).update(
        0, probs, None, torch.tensor([[0.0, 0.0, -1.0]])
    )
    value = build_loss("full")(logits(), targets)
    assert value.item() == pytest.approx((LN2 + LN43) / 2)  # entries 0 (+1) and 2 (-1); entry 1 ignored
