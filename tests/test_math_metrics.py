"""Independent math for sigrl/metrics.py: AP (ties grouped as scikit-learn does), mAP with
both empty-class rules, overall P/R/F1@k.

The expected values come from the definitions of docs/design.md §4 written as plain
Python loops over images (and from scikit-learn's ``average_precision_score`` as a second,
independent oracle), never from our own functions.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sigrl.errors import UsageError
from sigrl.metrics import average_precision_per_class, mean_average_precision, precision_recall_f1_at_k


def loop_ap(scores, targets):
    """AP of one column: known = labelled +-1; every positive gets the precision at the end
    of its tie group: #positives with score >= s / #known with score >= s. None if no positive."""
    known = [(float(s), int(t)) for s, t in zip(scores, targets) if t != 0]
    positives = [s for s, t in known if t == 1]
    if not positives:
        return None
    total = 0.0
    for s in positives:
        ge_known = sum(1 for v, _ in known if v >= s)
        ge_pos = sum(1 for v in positives if v >= s)
        total += ge_pos / ge_known
    return total / len(positives)


def loop_ap_by_rank(scores, targets):
    """The same AP the long way: walk the ranking tie group by tie group (highest first)."""
    known = sorted(((float(s), int(t)) for s, t in zip(scores, targets) if t != 0), key=lambda st: -st[0])
    n_pos = sum(1 for _, t in known if t == 1)
    if n_pos == 0:
        return None
    seen = hits = 0
    total = 0.0
    i = 0
    while i < len(known):
        j = i
        while j < len(known) and known[j][0] == known[i][0]:
            j += 1
        group = known[i:j]
        seen += len(group)
        g_pos = sum(1 for _, t in group if t == 1)
        hits += g_pos
        total += g_pos * hits / seen
        i = j
    return total / n_pos


def loop_topk(row, k):
    """Indices of the k highest scores of a row; ties: lower column index first."""
    order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))
    return order[:k]


def loop_prf(scores, targets, k):
    n = scores.shape[0]
    tp = 0
    for i in range(n):
        tp += sum(1 for j in loop_topk(scores[i], k) if targets[i, j] == 1)
    n_pos = int(sum(1 for i in range(n) for j in range(scores.shape[1]) if targets[i, j] == 1))
    p = tp / (n * k)
    r = tp / n_pos if n_pos else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def random_case(seed, n=30, c=6, levels=None, probs=(0.25, 0.5, 0.25)):
    rng = np.random.default_rng(seed)
    if levels:
        scores = rng.integers(0, levels, size=(n, c)).astype(np.float64)
    else:
        scores = rng.normal(size=(n, c))
    targets = rng.choice([1, -1, 0], size=(n, c), p=probs)
    return scores, targets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 3, 7])
def test_ap_matches_loop_definition_and_sklearn(seed, levels):
    scores, targets = random_case(seed, levels=levels)
    ours = average_precision_per_class(scores, targets, empty_class="skip")
    for j in range(scores.shape[1]):
        a = loop_ap(scores[:, j], targets[:, j])
        b = loop_ap_by_rank(scores[:, j], targets[:, j])
        if a is None:
            assert b is None and math.isnan(ours[j])
            continue
        m = targets[:, j] != 0
        sk = average_precision_score(targets[m, j] == 1, scores[m, j])
        assert a == pytest.approx(b, abs=1e-12) and a == pytest.approx(sk, abs=1e-12)  # the oracles agree
        assert ours[j] == pytest.approx(a, abs=1e-12)


def test_ap_hand_values_with_ties_and_unknowns():
    # known, highest first: 0.9(+) | 0.7(-) 0.7(+) 0.7(-) | 0.2(+) ; unknown 0.95 and 0.8 ignored
    s = np.array([0.9, 0.95, 0.7, 0.7, 0.8, 0.7, 0.2])[:, None]
    t = np.array([1, 0, -1, 1, 0, -1, 1])[:, None]
    # positive 1: 1/1; positive in the tie group: 2/4; last positive: 3/5
    expected = (1 + 2 / 4 + 3 / 5) / 3
    assert average_precision_per_class(s, t)[0] == pytest.approx(expected, abs=1e-12)
    # two positives inside one tie group share the end-of-group precision
    s2 = np.array([0.5, 0.5, 0.5, 0.1])[:, None]
    t2 = np.array([1, -1, 1, 1])[:, None]
    assert average_precision_per_class(s2, t2)[0] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3, abs=1e-12)
    # a single known positive: AP 1 whatever its score
    assert average_precision_per_class(np.array([[-5.0], [3.0]]), np.array([[1], [0]]))[0] == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_map_zero_and_skip_rules(seed):
    scores, targets = random_case(seed, n=12, c=8, probs=(0.12, 0.6, 0.28))
    targets[:, 2] = np.where(targets[:, 2] == 1, -1, targets[:, 2])  # class 2: no positive
    targets[:, 5] = 0  # class 5: nothing known
    aps = [loop_ap(scores[:, j], targets[:, j]) for j in range(8)]
    assert aps[2] is None and aps[5] is None
    zero = sum(a if a is not None else 0.0 for a in aps) / 8
    present = [a for a in aps if a is not None]
    skip = sum(present) / len(present)
    assert mean_average_precision(scores, targets) == pytest.approx(zero, abs=1e-12)
    assert mean_average_precision(scores, targets, empty_class="zero") == pytest.approx(zero, abs=1e-12)
    assert mean_average_precision(scores, targets, empty_class="skip") == pytest.approx(skip, abs=1e-12)
    per = average_precision_per_class(scores, targets, empty_class="zero")
    assert per[2] == 0.0 and per[5] == 0.0
    assert skip > zero  # the two rules differ here


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("levels", [None, 2, 4])
def test_prf_at_k_matches_loop_definition(seed, k, levels):
    scores, targets = random_case(seed, n=25, c=7, levels=levels, probs=(0.3, 0.5, 0.2))
    got = precision_recall_f1_at_k(scores, targets, k)
    exp = loop_prf(scores, targets, k)
    assert got == pytest.approx(exp, abs=1e-12)


def test_prf_hand_value_unknowns_count_as_wrong_and_recall_pools_images():
    scores = np.array([[0.9, 0.8, 0.1, 0.0],
                       [0.1, 0.2, 0.3, 0.4],
                       [0.5, 0.5, 0.5, 0.9]])
    targets = np.array([[0, 1, 1, -1],
                        [1, -1, -1, 1],
                        [1, 1, -1, -1]])
    # k = 2: image 0 -> {0 (unknown), 1 (+)}: 1 TP; image 1 -> {3 (+), 2 (-)}: 1 TP;
    # image 2 -> {3 (-), 0 (+, tie at 0.5 broken to the lowest column)}: 1 TP
    p, r, f = precision_recall_f1_at_k(scores, targets, 2)
    assert p == pytest.approx(3 / 6) and r == pytest.approx(3 / 6) and f == pytest.approx(0.5)
    # k = 1: TPs: image 0 -> col 0 unknown: 0; image 1 -> col 3 +: 1; image 2 -> col 3 -: 0
    p, r, f = precision_recall_f1_at_k(scores, targets, 1)
    assert (p, r) == pytest.approx((1 / 3, 1 / 6))
    assert f == pytest.approx(2 * (1 / 3) * (1 / 6) / (1 / 3 + 1 / 6))
    # k = C: every positive predicted: recall 1, precision = #pos / (N C)
    assert precision_recall_f1_at_k(scores, targets, 4)[:2] == pytest.approx((6 / 12, 1.0))


def test_prf_k_bounds_and_empty_input():
    s, t = random_case(0, n=3, c=4)
    with pytest.raises(UsageError):
        precision_recall_f1_at_k(s, t, 5)
    with pytest.raises(UsageError):
        precision_recall_f1_at_k(s, t, True)
    with pytest.raises(UsageError):
        precision_recall_f1_at_k(s, t, 2.5)
    assert precision_recall_f1_at_k(np.zeros((0, 4)), np.zeros((0, 4)), 2) == (0.0, 0.0, 0.0)


def test_blocked_paths_agree_with_the_loops(monkeypatch):
    import sigrl.metrics as metrics

    scores, targets = random_case(9, n=40, c=9, levels=5)
    exp_ap = [loop_ap(scores[:, j], targets[:, j]) or 0.0 for j in range(9)]
    exp_f = loop_prf(scores, targets, 3)
    for block in (1, 40 * 9 * 2, 10**9):
        monkeypatch.setattr(metrics, "_BLOCK_BYTES", block)
        np.testing.assert_allclose(average_precision_per_class(scores, targets), exp_ap, atol=1e-12)
        assert precision_recall_f1_at_k(scores, targets, 3) == pytest.approx(exp_f, abs=1e-12)


def test_input_dtypes_give_the_loop_values():
    torch = pytest.importorskip("torch")  # third-party, optional: the metrics take numpy too
    scores, targets = random_case(3, n=20, c=5, levels=4)
    exp = [loop_ap(scores[:, j], targets[:, j]) or 0.0 for j in range(5)]
    np.testing.assert_allclose(average_precision_per_class(torch.tensor(scores).bfloat16(), torch.tensor(targets)),
                               exp, atol=1e-12)  # small integers: exact in bfloat16
    np.testing.assert_allclose(average_precision_per_class(scores.astype(np.int64), targets.astype(np.int8)),
                               exp, atol=1e-12)
    np.testing.assert_allclose(average_precision_per_class(scores.tolist(), targets.tolist()), exp, atol=1e-12)
    # float64 scores keep their precision (not cast to float32): two scores 1e-12 apart stay ordered
    s = np.array([[1.0], [1.0 + 1e-12]])
    t = np.array([[-1], [1]])
    assert average_precision_per_class(s, t)[0] == 1.0


def test_target_validation():
    s = np.zeros((2, 2))
    for bad in (np.array([[2, 0], [1, 1]]), np.array([[0.5, 0], [1, 1]]), np.array([[1, 0], [-2, 1]], dtype=np.int8)):
        with pytest.raises(UsageError, match=r"\{1, -1, 0\}"):
            average_precision_per_class(s, bad)
    with pytest.raises(UsageError):
        average_precision_per_class(s, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(UsageError, match="real"):
        average_precision_per_class(np.array([[1j, 0], [0, 0]]), np.zeros((2, 2)))
    with pytest.raises(UsageError, match="C = 0"):
        mean_average_precision(np.zeros((3, 0)), np.zeros((3, 0)))
