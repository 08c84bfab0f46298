"""Metrics: per-class AP with unknown labels, mAP (both empty-class rules), overall F1@k."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_score, recall_score

from sigrl.errors import UsageError
from sigrl.metrics import average_precision_per_class, precision_recall_f1_at_k, mean_average_precision


def col(*values):
    return np.asarray(values, dtype=float)[:, None]


# ---------------------------------------------------------------- hand-worked AP values


def test_ap_hand_worked_no_unknowns():
    # ranking + - + - : precision 1/1 at the first positive, 2/3 at the second
    ap = average_precision_per_class(col(0.9, 0.8, 0.7, 0.6), col(1, -1, 1, -1))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_ap_ignores_unknowns():
    # known ranking: 0.9(+) 0.8(-) 0.7(+) -> (1 + 2/3)/2; the two unknowns are not ranked
    scores, targets = col(0.9, 0.85, 0.8, 0.7, 0.6), col(1, 0, -1, 1, 0)
    assert average_precision_per_class(scores, targets)[0] == pytest.approx(5 / 6)
    # had the unknown at 0.85 been a negative: (1 + 2/4)/2
    assert average_precision_per_class(scores, col(1, -1, -1, 1, 0))[0] == pytest.approx(0.75)


def test_ap_tie_rule_is_order_independent():
    # a positive tied with a negative gets the precision at the end of the group: 1/2
    expected = (1 / 2 + 2 / 3) / 2
    a = average_precision_per_class(col(0.5, 0.5, 0.1), col(1, -1, 1))[0]
    b = average_precision_per_class(col(0.5, 0.5, 0.1), col(-1, 1, 1))[0]
    assert a == pytest.approx(expected) and b == pytest.approx(expected)
    # all scores equal: precision = prevalence among known images
    assert average_precision_per_class(col(1, 1, 1, 1), col(1, 0, -1, -1))[0] == pytest.approx(1 / 3)


def test_empty_classes_zero_and_skip():
    scores = np.array([[0.9, 0.2, 0.5], [0.1, 0.8, 0.4], [0.3, 0.3, 0.7]])
    targets = np.array([[1, -1, 0], [-1, 1, -1], [-1, 1, 0]])
    # class 0: AP 1; class 1: positives at ranks 1 and 2 (0.8, 0.3 vs neg 0.2) -> 1; class 2: empty
    per_zero = average_precision_per_class(scores, targets, empty_class="zero")
    np.testing.assert_allclose(per_zero, [1.0, 1.0, 0.0])
    per_skip = average_precision_per_class(scores, targets, empty_class="skip")
    assert per_skip[:2].tolist() == [1.0, 1.0] and np.isnan(per_skip[2])
    assert mean_average_precision(scores, targets) == pytest.approx(2 / 3)
    assert mean_average_precision(scores, targets, empty_class="skip") == pytest.approx(1.0)
    with pytest.raises(UsageError, match="no class has a positive"):
        mean_average_precision(scores, -np.abs(targets), empty_class="skip")
    assert mean_average_precision(scores, -np.abs(targets)) == 0.0
    with pytest.raises(UsageError, match="empty_class"):
        mean_average_precision(scores, targets, empty_class="ignore")


def test_perfect_and_worst_rankings():
    t = np.array([[1], [1], [-1], [-1], [-1]])
    assert mean_average_precision(-np.arange(5.0)[:, None], t) == 1.0
    # positives ranked last: (1/4 + 2/5)/2
    assert mean_average_precision(np.arange(5.0)[:, None], t) == pytest.approx((1 / 4 + 2 / 5) / 2)


# ------------------------------------------------------------ scikit-learn cross-checks


def test_matches_sklearn_without_unknowns_including_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(400, 12)).astype(np.float32)  # many ties
    targets = np.where(rng.random((400, 12)) < 0.3, 1, -1)
    ours = average_precision_per_class(scores, targets)
    ref = [average_precision_score(targets[:, c] == 1, scores[:, c]) for c in range(12)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_matches_sklearn_on_known_rows_with_unknowns():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(300, 9))
    targets = rng.choice([1, -1, 0], size=(300, 9), p=[0.2, 0.5, 0.3])
    ours = average_precision_per_class(scores, targets)
    for c in range(9):
        m = targets[:, c] != 0
        assert ours[c] == pytest.approx(average_precision_score(targets[m, c] == 1, scores[m, c]), abs=1e-12)
    # moving the scores of unknown entries anywhere changes nothing
    moved = np.where(targets == 0, rng.normal(size=scores.shape) * 100, scores)
    np.testing.assert_allclose(average_precision_per_class(moved, targets), ours, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    levels=st.integers(1, 8),
)
def test_property_sklearn_agreement(n, c, seed, levels):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n, c)).astype(np.float64)
    targets = rng.choice([1, -1, 0], size=(n, c))
    ours = average_precision_per_class(scores, targets, empty_class="skip")
    for j in range(c):
        m = targets[:, j] != 0
        if not (targets[m, j] == 1).any():
            assert np.isnan(ours[j])
        else:
            ref = average_precision_score(targets[m, j] == 1, scores[m, j])
            assert ours[j] == pytest.approx(ref, abs=1e-12)
            assert 0.0 <= ours[j] <= 1.0


def test_blocking_gives_same_result(monkeypatch):
    import sigrl.metrics as metrics

    rng = np.random.default_rng(2)
    scores = rng.random((500, 37), dtype=np.float32)
    targets = rng.choice(np.array([1, -1, 0], dtype=np.int8), size=(500, 37))
    whole = average_precision_per_class(scores, targets)
    whole_f1 = precision_recall_f1_at_k(scores, targets, 3)
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 500 * 5 * 3)  # blocks of 3 columns
    np.testing.assert_array_equal(average_precision_per_class(scores, targets), whole)
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 1)  # one column / one row at a time
    np.testing.assert_array_equal(average_precision_per_class(scores, targets), whole)
    assert precision_recall_f1_at_k(scores, targets, 3) == whole_f1


# ---------------------------------------------------------------------------- F1@k


def test_f1_hand_worked():
    scores = np.array([[0.9, 0.1, 0.8, 0.3], [0.2, 0.7, 0.6, 0.1]])
    targets = np.array([[1, -1, -1, 1], [-1, 1, 0, 1]])
    # k=2: image 0 predicts {0, 2} (1 TP), image 1 predicts {1, 2} (1 TP; col 2 is unknown)
    p, r, f = precision_recall_f1_at_k(scores, targets, 2)
    assert (p, r, f) == pytest.approx((2 / 4, 2 / 4, 0.5))
    # k=1: both top-1 are positives: P = 1, R = 2/4, F1 = 2/3
    assert precision_recall_f1_at_k(scores, targets, 1) == pytest.approx((1.0, 0.5, 2 / 3))


def test_f1_ties_and_degenerate_cases():
    # ties at the k-th score are broken by lower column index
    assert precision_recall_f1_at_k(np.array([[0.5, 0.5, 0.5]]), np.array([[-1, -1, 1]]), 1) == (0.0, 0.0, 0.0)
    assert precision_recall_f1_at_k(np.array([[0.5, 0.5, 0.5]]), np.array([[1, -1, -1]]), 1) == (1.0, 1.0, 1.0)
    # top-2 of [0.5, 0.9, 0.5] = {1, 0}: the tie at 0.5 goes to column 0 (a negative)
    assert precision_recall_f1_at_k(np.array([[0.5, 0.9, 0.5]]), np.array([[-1, 1, 1]]), 2) == (0.5, 0.5, 0.5)
    # no positive anywhere: R = 0, F1 = 0
    assert precision_recall_f1_at_k(np.ones((2, 3)), -np.ones((2, 3)), 2) == (0.0, 0.0, 0.0)
    with pytest.raises(UsageError, match="k must be"):
        precision_recall_f1_at_k(np.ones((2, 3)), -np.ones((2, 3)), 4)
    with pytest.raises(UsageError, match="k must be"):
        precision_recall_f1_at_k(np.ones((2, 3)), -np.ones((2, 3)), 0)


def test_f1_matches_sklearn_micro_averages():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(250, 20))  # continuous: no ties
    targets = rng.choice([1, -1, 0], size=(250, 20), p=[0.15, 0.75, 0.1])
    for k in (3, 5):
        top = np.argsort(-scores, axis=1)[:, :k]
        pred = np.zeros_like(targets, dtype=bool)
        np.put_along_axis(pred, top, True, axis=1)
        truth = targets == 1
        p, r, f = precision_recall_f1_at_k(scores, targets, k)
        assert p == pytest.approx(precision_score(truth.ravel(), pred.ravel()))
        assert r == pytest.approx(recall_score(truth.ravel(), pred.ravel()))
        assert f == pytest.approx(2 * p * r / (p + r))


# --------------------------------------------------------------------- input handling


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    scores = rng.random((60, 7), dtype=np.float32)
    targets = rng.choice(np.array([1, -1, 0], dtype=np.int8), size=(60, 7))
    expected = mean_average_precision(scores, targets)
    got = mean_average_precision(torch.from_numpy(scores).requires_grad_(), torch.from_numpy(targets).long())
    assert got == pytest.approx(expected)
    assert precision_recall_f1_at_k(torch.from_numpy(scores).half(), torch.from_numpy(targets), 3) == precision_recall_f1_at_k(
        scores.astype(np.float16), targets, 3
    )


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError, match="same"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(UsageError, match=r"\{1, -1, 0\}"):
        mean_average_precision(np.zeros((2, 2)), np.array([[2, 0], [1, 1]]))
    with pytest.raises(UsageError, match="NaN"):
        mean_average_precision(np.array([[np.nan, 1.0]]), np.array([[1, -1]]))
    with pytest.raises(UsageError, match="2-D"):
        mean_average_precision(np.zeros(3), np.zeros(3))


def test_moderate_size_random_scores_give_prevalence():
    # speed: python benchmarks/bench_nuswide.py --images 20000 --labels 100 (and the full size by default)
    rng = np.random.default_rng(5)
    scores = rng.random((20_000, 100), dtype=np.float32)
    targets = rng.choice(np.array([1, -1, 0], dtype=np.int8), size=scores.shape, p=[0.05, 0.9, 0.05])
    m = mean_average_precision(scores, targets)
    p, r, f = precision_recall_f1_at_k(scores, targets, 5)
    assert 0.03 < m < 0.08  # random scores: AP ~ prevalence among known (0.05/0.95)
    assert 0.03 < p < 0.07  # random top-5: precision ~ positive rate 0.05


# ----------------------------------------------------------- contracts (written to kill
# surviving mutants of benchmarks/bench_mutation.py)


def test_error_messages_name_the_argument():
    with pytest.raises(UsageError, match=r"^scores must be 2-D"):
        mean_average_precision(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(UsageError, match=r"^targets must be 2-D"):
        mean_average_precision(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(UsageError, match=r"^scores must be an \(N, C\) array or tensor"):
        mean_average_precision([[1.0, 2.0], [3.0]], np.zeros((2, 2)))  # ragged
    with pytest.raises(UsageError, match=r"^scores must be real numbers, got dtype"):
        mean_average_precision(np.array([["a", "b"]]), np.array([[1, -1]]))
    with pytest.raises(UsageError, match=r"^targets must be numbers in \{1, -1, 0\}, got dtype"):
        mean_average_precision(np.zeros((1, 2)), np.array([["a", "b"]]))
    with pytest.raises(UsageError, match=r"^scores contain NaN;"):
        mean_average_precision(np.array([[np.nan, 1.0]]), np.array([[1, -1]]))
    with pytest.raises(UsageError, match=r"^mAP needs at least one class \(C = 0\)"):
        mean_average_precision(np.zeros((3, 0)), np.zeros((3, 0)))
    with pytest.raises(UsageError, match=r"^mAP with empty_class='skip': no class has a positive"):
        mean_average_precision(np.zeros((2, 2)), -np.ones((2, 2)), empty_class="skip")


def test_int8_targets_out_of_range_are_located():
    for bad, where in (([[1, -1], [2, 0]], "found 2 at row 1, column 0"),
                       ([[1, 0], [-2, -1]], "found -2 at row 1, column 0"),
                       ([[0, 1], [-1, 1]], None)):
        t = np.array(bad, dtype=np.int8)
        if where is None:
            assert average_precision_per_class(np.zeros((2, 2)), t).shape == (2,)
        else:
            with pytest.raises(UsageError, match=where):
                average_precision_per_class(np.zeros((2, 2)), t)


def test_float64_scores_are_not_rounded_to_float32():
    torch = pytest.importorskip("torch")
    s = np.array([[1.0], [1.0 + 1e-12]])  # equal in float32, ordered in float64
    t = np.array([[-1], [1]])
    assert average_precision_per_class(s, t)[0] == 1.0
    assert average_precision_per_class(torch.tensor(s), torch.tensor(t))[0] == 1.0


def test_column_blocks_of_odd_sizes(monkeypatch):
    import sigrl.metrics as metrics

    rng = np.random.default_rng(8)
    scores = rng.integers(0, 4, size=(40, 9)).astype(np.float64)
    targets = rng.choice([1, -1, 0], size=(40, 9))
    whole = average_precision_per_class(scores, targets)
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 20)  # a fraction of a column: one at a time
    np.testing.assert_array_equal(average_precision_per_class(scores, targets), whole)
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 40 * 9 * 4)  # 4 columns per block
    np.testing.assert_array_equal(average_precision_per_class(scores, targets), whole)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 20])
def test_top_k_on_many_labels_matches_a_full_sort(k):
    # np.partition only orders the k-th element: on 300 labels a wrong kth index shows
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(30, 300))
    targets = rng.choice([1, -1], size=(30, 300), p=[0.1, 0.9])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    tp = int((np.take_along_axis(targets, top, axis=1) == 1).sum())
    p, r, _ = precision_recall_f1_at_k(scores, targets, k)
    assert p == pytest.approx(tp / (30 * k)) and r == pytest.approx(tp / int((targets == 1).sum()))
