import math

import pytest
import torch

from sigrl.errors import ConfigError, DataError, UsageError
from sigrl.losses.ranking import RankingLoss


def naive_ranking(logits, targets, margin, smooth=False, normalize="pairs"):
    """Loop over images and pairs (independent of the vectorised code).

    normalize="pairs": mean over the pairs of an image, mean over images with pairs.
    normalize="violating" (BiAM/MKT): sum over the pairs / number of pairs with
    margin - s_pos + s_neg > 0 (0 if none), mean over ALL images."""
    per_image = []
    for s, t in zip(logits.tolist(), targets.tolist()):
        pairs = [(i, j) for i in range(len(t)) for j in range(len(t)) if t[i] == 1 and t[j] == -1]
        if not pairs:
            if normalize == "violating":
                per_image.append(0.0)
            continue
        vals, n_viol = [], 0
        for i, j in pairs:
            d = margin - s[i] + s[j]
            vals.append(math.log1p(math.exp(d)) if smooth else max(0.0, d))
            n_viol += d > 0
        if normalize == "violating":
            per_image.append(sum(vals) / n_viol if n_viol else 0.0)
        else:
            per_image.append(sum(vals) / len(vals))
    return sum(per_image) / len(per_image) if per_image else 0.0


def test_hand_computed_hinge_the_two_normalisations_differ():
    logits = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.5, 1.0], [9.0, -9.0, 0.0]])
    targets = torch.tensor([[1, -1, -1], [1, 1, -1], [0, 0, 0]])
    # image 0: pairs (0,1): 1 - 0.5 + 1 = 1.5 ; (0,2): 1 - 0.5 + 0 = 0.5   2 pairs, 2 violating
    # image 1: pairs (0,2): 1 - 2 + 1 = 0    ; (1,2): 1 - 0.5 + 1 = 1.5   2 pairs, 1 violating
    # image 2: no pair
    # violating (reference, default): (2.0/2 + 1.5/1 + 0) / 3 images = 0.8333...
    # pairs: (2.0/2 + 1.5/2) / 2 images with pairs = 0.875
    loss = RankingLoss(margin=1.0)(logits, targets)
    assert loss.item() == pytest.approx(2.5 / 3)
    per_image = RankingLoss(margin=1.0, reduction="none")(logits, targets)
    assert per_image.tolist() == pytest.approx([1.0, 1.5, 0.0])
    assert RankingLoss(margin=1.0, normalize="pairs")(logits, targets).item() == pytest.approx(0.875)
    per_pair = RankingLoss(margin=1.0, reduction="none", normalize="pairs")(logits, targets)
    assert per_pair.tolist() == pytest.approx([1.0, 0.75, 0.0])


def test_reference_formula_mkt_style():
    """BiAM/MKT's ranking loss written from its formula with masks (another route than
    both the loop and our code): sum of clamp(mask * (1 + s_neg - s_pos), 0) over pairs,
    divided by the count of positive entries, mean over the batch."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 8, generator=g, dtype=torch.float64)
    y = torch.randint(-1, 2, (6, 8), generator=g)
    y[2] = 0
    pos, neg = (y == 1).double(), (y == -1).double()
    mask = pos[:, None, :] * neg[:, :, None]  # [b, j (neg), i (pos)]
    o = (mask * (1 + s[:, :, None] - s[:, None, :])).clamp_min(0)
    want = (o.sum((1, 2)) / (torch.sign(o).sum((1, 2)) + 1e-12)).mean()
    assert RankingLoss()(s, y).item() == pytest.approx(want.item(), rel=1e-9)
    assert RankingLoss(normalize="pairs")(s, y).item() != pytest.approx(want.item(), rel=1e-3)


def test_hand_computed_softplus_and_margin():
    logits = torch.tensor([[0.5, 1.0, 0.0]])
    targets = torch.tensor([[1, -1, -1]])
    want = (math.log1p(math.exp(0.2 - 0.5 + 1.0)) + math.log1p(math.exp(0.2 - 0.5))) / 2
    got = RankingLoss(margin=0.2, kind="softplus", normalize="pairs")(logits, targets)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # "violating": one of the two pairs has margin - s_pos + s_neg > 0
    got = RankingLoss(margin=0.2, kind="softplus")(logits, targets)
    assert got.item() == pytest.approx(want * 2 / 1, rel=1e-6)


def test_satisfied_margins_give_zero():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    targets = torch.tensor([[1, -1, 0, -1]])
    assert RankingLoss(margin=1.0)(logits, targets).item() == 0.0


@pytest.mark.parametrize("normalize", ["violating", "pairs"])
def test_matches_naive_loop_on_random_data(normalize):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 9, generator=g, dtype=torch.float64)
    targets = torch.randint(-1, 2, (7, 9), generator=g)
    targets[3] = 1  # an image with no negative
    targets[4] = 0  # an image with nothing known
    for kind in ("hinge", "softplus"):
        got = RankingLoss(margin=0.7, kind=kind, normalize=normalize)(logits, targets).item()
        want = naive_ranking(logits, targets, 0.7, kind == "softplus", normalize)
        assert got == pytest.approx(want, rel=1e-10)


def test_no_pairs_is_zero_and_backward_works():
    logits = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [-1, -1, 0, 0]])
    loss = RankingLoss()(logits, targets)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradient_hand_computed():
    logits = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.5, 1.0]], requires_grad=True)
    targets = torch.tensor([[1, -1, -1], [1, 1, -1]])
    RankingLoss(margin=1.0)(logits, targets).backward()
    # violating, mean over 2 images: image 0 = (h01 + h02) / 2, both active:
    #   d/ds0 = -1/2, d/ds1 = d/ds2 = 1/4 ; image 1 = h12 / 1 (h02 = 0 exactly, inactive):
    #   d/ds1 = -1/2, d/ds2 = +1/2
    assert logits.grad.tolist() == [[-0.5, 0.25, 0.25], [0.0, -0.5, 0.5]]
    logits.grad = None
    RankingLoss(margin=1.0, normalize="pairs")(logits, targets).backward()
    # pairs: image 1 = (h02 + h12) / 2 -> d/ds1 = -1/4, d/ds2 = +1/4
    assert logits.grad.tolist() == [[-0.5, 0.25, 0.25], [0.0, -0.25, 0.25]]


def test_unknown_entries_are_ignored():
    logits = torch.tensor([[0.5, 1.0, 0.0, 100.0]])
    a = RankingLoss()(logits, torch.tensor([[1, -1, -1, 0]]))
    b = RankingLoss()(logits[:, :3], torch.tensor([[1, -1, -1]]))
    assert a.item() == b.item()


def test_errors():
    with pytest.raises(DataError):
        RankingLoss()(torch.zeros(1, 3), torch.tensor([[2, 0, -1]]))
    with pytest.raises(UsageError):
        RankingLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError):
        RankingLoss(kind="cubic")
    with pytest.raises(ConfigError):
        RankingLoss(margin="wide")
    with pytest.raises(ConfigError):
        RankingLoss(normalize="images")


def test_registry_builds_it():
    from sigrl.losses import build_loss

    loss = build_loss("ranking", margin=0.5)
    assert isinstance(loss, RankingLoss) and loss.margin == 0.5
    assert build_loss("ranking").normalize == "violating" and build_loss("ranking").margin == 1.0
    # the registry's uniform call: extra keyword arguments are accepted
    out = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, -1]]), index=torch.tensor([0]), epoch=0)
    assert out.item() == pytest.approx(0.0)


def test_pairs_normalisation_with_one_pair_and_without_any():
    """normalize="pairs": an image with a single (positive, negative) pair counts that pair
    in full; with no pair anywhere the loss is an exact zero that still has a gradient."""
    from sigrl.losses.ranking import RankingLoss as RL

    z = torch.tensor([[0.2, 0.5, 0.0], [1.0, -1.0, 0.3]], requires_grad=True)
    y = torch.tensor([[1.0, -1.0, 0.0], [1.0, -1.0, -1.0]])
    # image 0: one pair, hinge 1 - 0.2 + 0.5 = 1.3; image 1: pairs (0,1): 0 and (0,2): 1 - 1 + 0.3 = 0.3 -> 0.15
    per = RL(normalize="pairs", reduction="none")(z, y)
    assert per.tolist() == pytest.approx([1.3, 0.15])
    assert RL(normalize="pairs")(z, y).item() == pytest.approx((1.3 + 0.15) / 2)
    none = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    loss = RL(normalize="pairs")(z, none)
    assert loss.item() == 0.0 and math.isfinite(loss.item())
    loss.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) == 0.0


def test_ranking_loss_messages_say_what_to_fix():
    from sigrl.errors import ConfigError, DataError, UsageError
    from sigrl.losses.ranking import RankingLoss as RL

    with pytest.raises(ConfigError, match="ranking loss: margin must be a number, got 'wide'"):
        RL(margin="wide")
    with pytest.raises(ConfigError, match="ranking loss: kind must be one of hinge, softplus, got 'l2'"):
        RL(kind="l2")
    with pytest.raises(ConfigError, match="ranking loss: reduction must be one of mean, none, got 'sum'"):
        RL(reduction="sum")
    with pytest.raises(ConfigError, match="ranking loss: normalize must be one of violating, pairs, got 'all'"):
        RL(normalize="all")
    with pytest.raises(UsageError, match=r"ranking loss: logits and targets must both be \(B, C\), got \(2, 3\) and \(2, 2\)"):
        RL()(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(DataError, match=r"ranking loss: targets must hold \+1 \(positive\), -1 \(negative\) or 0"):
        RL()(torch.zeros(1, 2), torch.tensor([[2.0, 0.0]]))
