import math

import pytest
import torch

from sigrl.errors import ConfigError, DataError, UsageError
from sigrl.losses.ranking import RankingLoss


def naive_ranking(logits, targets, margin, smooth=False):
    """Loop over images and pairs (independent of the vectorised code)."""
    per_image = []
    for s, t in zip(logits.tolist(), targets.tolist()):
        pairs = [(i, j) for i in range(len(t)) for j in range(len(t)) if t[i] == 1 and t[j] == -1]
        if not pairs:
            continue
        vals = []
        for i, j in pairs:
            d = margin - s[i] + s[j]
            vals.append(math.log1p(math.exp(d)) if smooth else max(0.0, d))
        per_image.append(sum(vals) / len(vals))
    return sum(per_image) / len(per_image) if per_image else 0.0


def test_hand_computed_hinge():
    logits = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.5, 1.0], [9.0, -9.0, 0.0]])
    targets = torch.tensor([[1, -1, -1], [1, 1, -1], [0, 0, 0]])
    # image 0: pairs (0,1): 1 - 0.5 + 1 = 1.5 ; (0,2): 1 - 0.5 + 0 = 0.5 -> 1.0
    # image 1: pairs (0,2): 1 - 2 + 1 = 0    ; (1,2): 1 - 0.5 + 1 = 1.5 -> 0.75
    # image 2: no pair, left out -> (1.0 + 0.75) / 2
    loss = RankingLoss(margin=1.0)(logits, targets)
    assert loss.item() == pytest.approx(0.875)
    per_image = RankingLoss(margin=1.0, reduction="none")(logits, targets)
    assert per_image.tolist() == pytest.approx([1.0, 0.75, 0.0])


def test_hand_computed_softplus_and_margin():
    logits = torch.tensor([[0.5, 1.0, 0.0]])
    targets = torch.tensor([[1, -1, -1]])
    want = (math.log1p(math.exp(0.2 - 0.5 + 1.0)) + math.log1p(math.exp(0.2 - 0.5))) / 2
    got = RankingLoss(margin=0.2, kind="softplus")(logits, targets)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_satisfied_margins_give_zero():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    targets = torch.tensor([[1, -1, 0, -1]])
    assert RankingLoss(margin=1.0)(logits, targets).item() == 0.0


def test_matches_naive_loop_on_random_data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 9, generator=g, dtype=torch.float64)
    targets = torch.randint(-1, 2, (7, 9), generator=g)
    targets[3] = 1  # an image with no negative
    targets[4] = 0  # an image with nothing known
    for kind in ("hinge", "softplus"):
        got = RankingLoss(margin=0.7, kind=kind)(logits, targets).item()
        assert got == pytest.approx(naive_ranking(logits, targets, 0.7, kind == "softplus"), rel=1e-10)


def test_no_pairs_is_zero_and_backward_works():
    logits = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [-1, -1, 0, 0]])
    loss = RankingLoss()(logits, targets)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradient_hand_computed():
    logits = torch.tensor([[0.5, 1.0, 0.0]], requires_grad=True)
    RankingLoss(margin=1.0)(logits, torch.tensor([[1, -1, -1]])).backward()
    # loss = ((1.5 - ... ) both pairs active) / 2: d/ds0 = -1, d/ds1 = d/ds2 = 1/2
    assert logits.grad.tolist() == [[-1.0, 0.5, 0.5]]


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


def test_registry_builds_it():
    from sigrl.losses import build_loss

    loss = build_loss("ranking", margin=0.5)
    assert isinstance(loss, RankingLoss) and loss.margin == 0.5
    # the registry's uniform call: extra keyword arguments are accepted
    out = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, -1]]), index=torch.tensor([0]), epoch=0)
    assert out.item() == pytest.approx(0.0)
