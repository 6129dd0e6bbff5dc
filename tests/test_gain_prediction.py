"""The predicted_gain order: a regressor from old embeddings to oracle_priority's margin gain."""

import numpy as np
import pytest

from backfill.embeddings import Embeddings, l2_normalize
from backfill.gain_prediction import GainPredictor, fit_gain_predictor
from backfill.methods import make_order
from backfill.ordering import order_by_score


def planted_split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four classes. The old model separates classes 0 and 1 and lumps 2 and 3 together around one direction
    (classes it never saw); the new model separates all four. So items of classes 2 and 3 gain most."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    old_centre = np.eye(8)[[0, 1, 2, 2]]
    new_centre = np.eye(8)[[0, 1, 2, 3]]
    old = l2_normalize((old_centre[labels] + 0.3 * rng.standard_normal((labels.size, 8))).astype(np.float32))
    new = l2_normalize((new_centre[labels] + 0.3 * rng.standard_normal((labels.size, 8))).astype(np.float32))
    return old, new, labels


def test_the_predictor_ranks_the_items_the_new_model_improves_first():
    predictor = fit_gain_predictor(*planted_split(200, seed=0), epochs=10)
    old, new, labels = planted_split(50, seed=1)  # a gallery the predictor never saw
    order = make_order("predicted_gain", Embeddings(labels, old, new), gain_predictor=predictor.priority)
    first_half = labels[order[: order.size // 2]]
    assert np.isin(first_half, [2, 3]).mean() > 0.9
    np.testing.assert_array_equal(order, order_by_score(predictor.priority(old)))


def test_fitting_is_seeded():
    split = planted_split(20, seed=0)
    a, b = (fit_gain_predictor(*split, epochs=2, seed=3).priority(split[0]) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fit_gain_predictor(*split, epochs=2, seed=4).priority(split[0]))


def test_bad_inputs_are_clear_errors():
    old, new, labels = planted_split(5, seed=0)
    with pytest.raises(ValueError, match="all equal"):  # the new model places every item as the old one does
        fit_gain_predictor(old, old, labels)
    with pytest.raises(ValueError, match="hidden"):
        GainPredictor(8, hidden=0)
    with pytest.raises(ValueError, match="needs a gain predictor"):
        make_order("predicted_gain", Embeddings(labels, old, new))
