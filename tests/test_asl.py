"""ASL's configuration checks and its zero-margin / zero-focusing cases (the formula itself
is checked entry by entry in tests/test_prompt_learners.py::test_asl_is_the_papers_formula)."""
import math

import pytest
import torch

from sigrl.errors import ConfigError
from sigrl.losses.asl import AsymmetricLoss


@pytest.mark.parametrize("kw,msg", [
    ({"gamma_pos": -1.0, "gamma_neg": 0.0}, r"loss asl: gamma_pos and gamma_neg must be >= 0, got -1.0, 0.0"),
    ({"gamma_pos": 0.0, "gamma_neg": -0.5}, r"loss asl: gamma_pos and gamma_neg must be >= 0, got 0.0, -0.5"),
    ({"clip": 1.0}, r"loss asl: clip must be in \[0, 1\), got 1.0"),
    ({"clip": -0.01}, r"loss asl: clip must be in \[0, 1\), got -0.01"),
    ({"unobserved": "skip"}, r"loss asl: unobserved must be 'negative' or 'ignore', got 'skip'"),
])
def test_asl_refuses_impossible_settings(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        AsymmetricLoss(**kw)


def test_asl_without_margin_and_focusing_is_the_summed_bce():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    loss = AsymmetricLoss(gamma_pos=0.0, gamma_neg=0.0, clip=0.0)(z, y)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    want = 0.0
    for b in range(2):
        for c in range(3):
            p = sig(z[b, c].item())
            if y[b, c] > 0:
                want -= math.log(p)
            else:  # unobserved counts as a negative by default
                want -= math.log(1.0 - p)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(want / 2, rel=1e-6)
    ignored = AsymmetricLoss(gamma_pos=0.0, gamma_neg=0.0, clip=0.0, unobserved="ignore")(z, y)
    drop = -math.log(1.0 - sig(0.5)) - math.log(1.0 - sig(0.0))
    assert ignored.item() == pytest.approx((want - drop) / 2, rel=1e-6)


def test_asl_focusing_one_weights_each_negative_by_its_probability():
    z = torch.tensor([[0.3, -0.7]])
    y = torch.tensor([[-1.0, -1.0]])
    loss = AsymmetricLoss(gamma_pos=0.0, gamma_neg=1.0, clip=0.0)(z, y)
    p = torch.sigmoid(z)
    assert loss.item() == pytest.approx(float(-(p * torch.log(1 - p)).sum()), rel=1e-6)
