import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from backfill.metrics import (
    area_under_curve,
    average_precision,
    cmc,
    mean_average_precision,
    negative_flip_rate,
    relative_gain,
)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("discrete", [False, True])
def test_ap_matches_sklearn(seed, discrete):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(20, 30)).astype(float) if discrete else rng.normal(size=(20, 30))
    relevant = rng.random((20, 30)) < 0.3
    relevant[:, 0] = True
    ours = average_precision(scores, relevant)
    ref = [average_precision_score(r, s) for r, s in zip(relevant, scores, strict=True)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_ap_hand_computed():
    # ranking: rel, irr, rel, irr -> (1/1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    relevant = np.array([True, False, True, False])
    assert average_precision(scores, relevant) == pytest.approx((1 + 2 / 3) / 2)
    # a third relevant item that was never retrieved still counts in the denominator
    assert average_precision(scores, relevant, n_relevant=3) == pytest.approx((1 + 2 / 3) / 3)
    # -inf = unreachable: adds nothing
    unreachable = np.array([0.9, 0.8, -np.inf, 0.6])
    assert average_precision(unreachable, relevant) == pytest.approx(1 / 2)
    assert np.isnan(average_precision(scores, np.zeros(4, bool)))


def test_cmc_hand_computed_and_pessimistic_ties():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    relevant = np.array([[False, False, True, False, False, False, False]])
    assert cmc(scores, relevant, ks=(1, 2, 3)).tolist() == [[False, False, True]]
    tie = cmc(np.array([0.5, 0.5]), np.array([False, True]), ks=(1, 2))
    assert tie.tolist() == [False, True]
    both_relevant = cmc(np.array([0.5, 0.5]), np.array([True, True]), ks=(1,))
    assert both_relevant.tolist() == [True]
    assert cmc(np.array([-np.inf, 0.2]), np.array([True, False]), ks=(1, 2)).tolist() == [False, False]


def test_means_and_curve_summaries():
    assert mean_average_precision(np.array([0.5, np.nan, 1.0])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no query has a relevant item"):
        mean_average_precision(np.array([np.nan]))
    assert area_under_curve([0.2, 0.4, 0.6]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="non-empty"):
        area_under_curve([])
    assert relative_gain(0.3, 0.2, 0.6) == pytest.approx(0.25)
    assert np.isnan(relative_gain(0.3, 0.2, 0.2))


def test_negative_flip_rate():
    old = np.array([True, True, False, False])
    new = np.array([True, False, True, False])
    assert negative_flip_rate(old, new) == pytest.approx(0.25)
    curve = negative_flip_rate(old, np.stack([new, ~old], axis=1))
    np.testing.assert_allclose(curve, [0.25, 0.5])
    with pytest.raises(ValueError):
        negative_flip_rate(old, new[:3])


def test_bad_inputs():
    with pytest.raises(ValueError, match="same"):
        average_precision(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="ks must be"):
        cmc(np.zeros(3), np.ones(3, bool), ks=(0,))
