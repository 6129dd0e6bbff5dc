import numpy as np
import pytest

from backfill.ordering import (
    BackfillState,
    class_centroids,
    classifier_entropy_priority,
    nearest_centroid_priority,
    num_backfilled,
    oracle_priority,
    order_by_score,
    random_order,
    validate_order,
)


def _is_perm(order, n):
    return sorted(order.tolist()) == list(range(n))


def test_random_order_is_seeded_permutation():
    a, b, c = random_order(50, seed=1), random_order(50, seed=1), random_order(50, seed=2)
    assert _is_perm(a, 50) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_order_by_score_descending_ties_by_id():
    np.testing.assert_array_equal(order_by_score(np.array([0.1, 0.9, 0.5, 0.9])), [1, 3, 2, 0])
    with pytest.raises(ValueError, match="NaN"):
        order_by_score(np.array([0.1, np.nan]))


@pytest.mark.parametrize(
    ("order", "match"),
    [
        (np.array([0, 1, 1]), "not a permutation"),
        (np.array([0, 1, 3]), r"ids must lie in \[0, 2\]"),
        (np.array([0, 1]), "has 2 entries"),
        (np.array([0.0, 1.5, 2.0]), "expected integers"),
        (np.array([[0, 1, 2]]), "1-D"),
    ],
)
def test_validate_order_rejects(order, match):
    with pytest.raises(ValueError, match=match):
        validate_order(order, 3)


def test_validate_order_accepts_integral_floats():
    np.testing.assert_array_equal(validate_order(np.array([2.0, 0.0, 1.0]), 3), [2, 0, 1])


def test_num_backfilled_rounds_half_up():
    assert num_backfilled(0.0, 10) == 0 and num_backfilled(1.0, 10) == 10
    assert num_backfilled(0.5, 5) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert num_backfilled(np.linspace(0, 1, 21)[7], 10) == 4  # 3.5 even if stored as 3.4999...
    assert num_backfilled(0.24, 10) == 2


@pytest.mark.parametrize("ratio", [-0.01, 1.01, float("nan"), "x"])
def test_num_backfilled_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        num_backfilled(ratio, 10)


def test_backfill_state():
    s = BackfillState(np.array([3, 1, 0, 2]), 0.5)
    assert s.m == 2 and s.backfilled.tolist() == [3, 1] and s.remaining.tolist() == [0, 2]
    assert s.mask.tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="not a permutation"):
        BackfillState(np.array([0, 0]), 0.5)


def test_centroid_priorities_give_permutations():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    cen = rng.normal(size=(3, 8))
    old = cen[labels] + 0.3 * rng.normal(size=(30, 8))
    old[0] = rng.normal(size=8)  # an item far from its class
    new = cen[labels] + 0.05 * rng.normal(size=(30, 8))
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    _, c = class_centroids(old, labels)
    pri = nearest_centroid_priority(old, c)
    order = order_by_score(pri)
    assert _is_perm(order, 30) and order[0] == 0
    assert _is_perm(order_by_score(oracle_priority(old, new, labels)), 30)
    with pytest.raises(ValueError, match="dimension"):
        nearest_centroid_priority(old, c[:, :4])


def test_classifier_entropy_priority():
    weight = np.array([[10.0, 0.0], [0.0, 10.0]])
    old = np.array([[1.0, 0.0], [0.7071, 0.7071], [0.0, 1.0]])
    ent = classifier_entropy_priority(old, weight)
    assert ent[1] == pytest.approx(np.log(2), rel=1e-3)  # equidistant from both classes: most uncertain
    assert ent[0] < 1e-3 and order_by_score(ent)[0] == 1
    flat = classifier_entropy_priority(old, weight, bias=np.array([0.0, 0.0]), temperature=1e6)
    np.testing.assert_allclose(flat, np.log(2), rtol=1e-6)
    with pytest.raises(ValueError, match="dimension"):
        classifier_entropy_priority(old, np.ones((2, 3)))
    with pytest.raises(ValueError, match="temperature"):
        classifier_entropy_priority(old, weight, temperature=0)
