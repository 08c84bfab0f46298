"""Observed labels: single positive, partial, hold-out split, save/load."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sigrl.data.observed import (
    holdout_split,
    load_observed,
    make_observed,
    partial,
    save_observed,
    single_positive,
)
from sigrl.errors import DataError, UsageError


def full_targets(n=500, c=12, seed=0, p=0.3):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, c)) < p, 1, -1).astype(np.int8)


def test_single_positive_keeps_exactly_one_true_positive():
    t = full_targets()
    t[:7] = -1  # images without a positive
    t[7:20, 3] = 0  # some unknown entries in the source
    obs = single_positive(t, seed=1)
    assert obs.dtype == np.int8 and obs.shape == t.shape
    has_pos = (t == 1).any(axis=1)
    np.testing.assert_array_equal((obs == 1).sum(axis=1), has_pos.astype(int))
    assert (obs[obs != 0] == 1).all()  # no negatives survive
    assert (t[obs == 1] == 1).all()  # the kept label is a real positive
    assert (obs[~has_pos] == 0).all()


def test_single_positive_deterministic_by_seed():
    t = full_targets()
    np.testing.assert_array_equal(single_positive(t, 5), single_positive(t, 5))
    assert (single_positive(t, 5) != single_positive(t, 6)).any()


def test_single_positive_is_uniform():
    # 20,000 copies of one image with 5 positives: each is kept ~4,000 times
    row = np.array([1, -1, 1, 1, -1, -1, 1, 1], dtype=np.int8)
    t = np.tile(row, (20_000, 1))
    counts = (single_positive(t, seed=123) == 1).sum(axis=0)[row == 1]
    expected = 20_000 / 5
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 18.5, (counts, chi2)  # 4 dof: P(chi2 > 18.5) ≈ 0.001


def test_single_positive_blocks_do_not_change_draws(monkeypatch):
    import sigrl.data.observed as observed

    t = full_targets(n=300)
    whole = single_positive(t, 9)
    monkeypatch.setattr(observed, "_ROW_BLOCK", 7)
    np.testing.assert_array_equal(single_positive(t, 9), whole)
    part = partial(t, 0.3, 9)
    monkeypatch.setattr(observed, "_ROW_BLOCK", 8192)
    np.testing.assert_array_equal(partial(t, 0.3, 9), part)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_partial_per_image_exact_counts(p):
    t = full_targets(n=400, c=20)
    t[:50, :5] = 0  # unknown in the source: never become known
    obs = partial(t, p, seed=2)
    known = (t != 0).sum(axis=1)
    np.testing.assert_array_equal((obs != 0).sum(axis=1), np.floor(p * known + 0.5))
    kept = obs != 0
    np.testing.assert_array_equal(obs[kept], t[kept])  # values kept as they were
    # both positives and negatives are kept, roughly in proportion
    assert abs((obs == 1).sum() / (t == 1).sum() - p) < 0.05
    assert abs((obs == -1).sum() / (t == -1).sum() - p) < 0.05
    # every column is hit about equally often (uniform subsets)
    per_col = kept[50:].mean(axis=0)
    assert np.abs(per_col - p).max() < 0.09


def test_partial_bernoulli_and_determinism():
    t = full_targets(n=2000, c=10)
    obs = partial(t, 0.3, seed=4, mode="bernoulli")
    assert abs((obs != 0).mean() - 0.3) < 0.02
    np.testing.assert_array_equal(obs, partial(t, 0.3, seed=4, mode="bernoulli"))
    assert (partial(t, 0.3, 4) != partial(t, 0.3, 5)).any()
    np.testing.assert_array_equal(partial(t, 1.0, 0), t)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "x", None])
def test_partial_bad_proportion(bad):
    with pytest.raises(UsageError, match="proportion"):
        partial(full_targets(10, 3), bad, 0)


def test_bad_targets_and_seed():
    with pytest.raises(UsageError, match="only 1"):
        single_positive(np.array([[2, 1]]), 0)
    with pytest.raises(UsageError, match="seed"):
        single_positive(np.array([[1, 1]]), -1)
    with pytest.raises(UsageError, match="kind"):
        make_observed(np.array([[1]]), "half", 0)
    with pytest.raises(UsageError, match="proportion"):
        make_observed(np.array([[1]]), "partial", 0)
    np.testing.assert_array_equal(make_observed(np.array([[1, -1]]), "full", 0), [[1, -1]])


def test_holdout_split():
    tr, va = holdout_split(1000, 0.2, seed=3)
    assert len(va) == 200 and len(tr) == 800
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    tr2, va2 = holdout_split(1000, 0.2, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, holdout_split(1000, 0.2, seed=4)[1])
    assert len(holdout_split(7, 0.2, 0)[1]) == 1  # round(1.4)
    assert holdout_split(0, 0.2, 0)[0].size == 0
    with pytest.raises(UsageError):
        holdout_split(10, 1.0, 0)


def test_save_load_round_trip(tmp_path):
    t = full_targets()
    obs = single_positive(t, 7)
    p = save_observed(tmp_path / "obs" / "voc_sp_seed7.npy", obs, kind="single_positive", seed=7,
                      source="voc2012/train")
    assert sorted(x.name for x in p.parent.iterdir()) == ["voc_sp_seed7.json", "voc_sp_seed7.npy"]
    back, meta = load_observed(p, expected_shape=t.shape)
    np.testing.assert_array_equal(back, obs)
    assert meta["seed"] == 7 and meta["kind"] == "single_positive" and meta["source"] == "voc2012/train"
    assert meta["positives"] == int((t == 1).any(axis=1).sum())
    with pytest.raises(DataError, match="expected"):
        load_observed(p, expected_shape=(3, 3))


def test_load_detects_tampering_and_missing(tmp_path):
    p = save_observed(tmp_path / "o.npy", partial(full_targets(), 0.5, 1), kind="partial", seed=1,
                      source="x", proportion=0.5)
    assert json.loads((tmp_path / "o.json").read_text())["proportion"] == 0.5
    np.save(p, np.zeros((2, 2), dtype=np.int8))
    with pytest.raises(DataError, match="sha256"):
        load_observed(p)
    (tmp_path / "o.json").unlink()
    with pytest.raises(DataError, match=r"o.json: file not found"):
        load_observed(p)
    with pytest.raises(DataError, match="file not found"):
        load_observed(tmp_path / "none.npy")
    with pytest.raises(UsageError, match=".npy"):
        save_observed(tmp_path / "o.txt", np.zeros((1, 1)), kind="full", seed=0, source="x")
