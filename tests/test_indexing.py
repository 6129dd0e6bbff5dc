import numpy as np
import pytest

from backfill.embeddings import Embeddings
from backfill.indexing import BackfillIndex
from backfill.ordering import num_backfilled, random_order
from backfill.strategies import STRATEGIES
from backfill.testing import merged_scores


def _bundle(n, seed):
    rng = np.random.default_rng(seed)
    dims = (("old", 8), ("new", 6), ("transformed", 8), ("bct", 8))
    arrays = {name: rng.normal(size=(n, d)) for name, d in dims}
    return Embeddings(rng.integers(0, 4, n), **arrays)


def _brute_force(strategy, queries, gallery, order, ratio, k, exclude=None):
    scores, spaces = merged_scores(strategy, queries, gallery, order, ratio, exclude=exclude)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, ids, axis=1)
    ids = np.where(np.isfinite(top), ids, -1)
    return ids, top, np.where(ids >= 0, spaces[np.maximum(ids, 0)], 0)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.77, 1.0])
def test_search_equals_brute_force(strategy, ratio):
    g, q = _bundle(60, 0), _bundle(9, 1)
    order = random_order(60, seed=2)
    index = BackfillIndex(g, order)
    exclude = np.array([0, -1, 5, 59, -1, 3, 3, 10, -1])
    res = index.search(strategy, q, ratio, k=7, exclude=exclude)
    ids, scores, spaces = _brute_force(strategy, q, g, order, ratio, 7, exclude)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_allclose(res.scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.spaces, spaces)
    assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32 and res.spaces.dtype == np.uint8
    assert not ((res.ids == exclude[:, None]) & (res.ids >= 0)).any()


def test_merge_hand_computed():
    # query (1, 0): old scores = first coordinate of g_old, new = of g_new; order backfills 2, then 0
    old = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    new = np.array([[0.8, 0.6], [1.0, 0.0], [0.6, 0.8]])
    g = Embeddings(np.zeros(3, int), old=old, new=new)
    q = Embeddings(None, old=np.array([[1.0, 0.0]]), new=np.array([[1.0, 0.0]]))
    res = BackfillIndex(g, np.array([2, 0, 1])).search("rank_merge", q, 2 / 3, k=3)
    # B = {2, 0} scored new: 0.6, 0.8; U = {1} scored old: 0.6.
    # -> 0 (0.8), then 1 and 2 tie at 0.6 (lower id first)
    assert res.ids.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(res.scores, [[0.8, 0.6, 0.6]], rtol=1e-6)
    assert res.spaces.tolist() == [[1, 0, 1]]


def test_one_side_empty_equals_single_space_search():
    g, q = _bundle(40, 3), _bundle(5, 4)
    order = random_order(40, seed=0)
    index = BackfillIndex(g, order)
    at0 = index.search("rank_merge", q, 0.0, k=5)
    old = index.search("old", q, 0.6, k=5)
    np.testing.assert_array_equal(at0.ids, old.ids)
    at1 = index.search("rank_merge", q, 1.0, k=5)
    new = index.search("new", q, 0.2, k=5)
    np.testing.assert_array_equal(at1.ids, new.ids)
    assert (at1.spaces == 1).all() and (at0.spaces == 0).all()


def test_new_partial_padding():
    g, q = _bundle(20, 5), _bundle(3, 6)
    order = random_order(20, seed=1)
    index = BackfillIndex(g, order)
    nothing = index.search("new_partial", q, 0.0, k=4)
    assert (nothing.ids == -1).all() and np.isneginf(nothing.scores).all()
    some = index.search("new_partial", q, 0.1, k=4)
    m = num_backfilled(0.1, 20)
    assert (some.ids[:, :m] >= 0).all() and (some.ids[:, m:] == -1).all()
    assert set(some.ids[0, :m]) == set(order[:m])
    big = index.search("old", q, 0.5, k=25)
    assert (big.ids[:, 20:] == -1).all() and (big.ids[:, :20] >= 0).all()


def test_bad_inputs():
    g = _bundle(10, 0)
    index = BackfillIndex(g, random_order(10, seed=0))
    with pytest.raises(ValueError, match="ratio"):
        index.search("old", g, 1.2, k=3)
    with pytest.raises(ValueError, match="k must be"):
        index.search("old", g, 0.5, k=0)
    q = Embeddings(None, old=np.ones((2, 3)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.search("old", q, 0.5, k=3)
    with pytest.raises(ValueError, match="'new'"):
        index.search("rank_merge", q, 0.5, k=3)
    with pytest.raises(ValueError, match="not a permutation"):
        BackfillIndex(g, np.zeros(10, dtype=int))


def test_options_are_keyword_only_and_spaces_are_typed():
    from backfill.strategies import Space

    g = _bundle(10, 0)
    index = BackfillIndex(g, random_order(10, seed=0))
    with pytest.raises(TypeError):
        index.search("old", g, 0.5, 3)
    res = index.search("rank_merge", g, 0.5, k=10)
    assert {res.space(0, r) for r in range(10)} == {Space.OLD, Space.NEW}
