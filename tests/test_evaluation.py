import numpy as np
import pytest

from backfill.embeddings import Embeddings
from backfill.evaluation import curve_points, evaluate_curve
from backfill.ordering import random_order
from backfill.report import evaluate_strategies
from backfill.strategies import STRATEGIES
from backfill.testing import reference_curve


def _random_bundle(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    arrays = {
        name: rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(n_classes, d))[labels]
        for name, d in (("old", 6), ("new", 5), ("transformed", 6), ("bct", 6))
    }
    return Embeddings(labels, **arrays)


def _tied_bundle(n, seed):
    """Entries +-0.5 in d=4: unit vectors whose dot products are exact multiples of 0.25 (many ties)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    names = ("old", "new", "transformed", "bct")
    arrays = {name: 0.5 * rng.choice([-1.0, 1.0], size=(n, 4)) for name in names}
    return Embeddings(labels, **arrays)


def _assert_same(fast, ref):
    np.testing.assert_array_equal(fast.valid, ref.valid)
    np.testing.assert_allclose(fast.ap[fast.valid], ref.ap[ref.valid], atol=1e-12)
    np.testing.assert_array_equal(fast.hit1, ref.hit1)
    np.testing.assert_array_equal(fast.hit5, ref.hit5)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize(("maker", "n", "seed"), [(_random_bundle, 43, 0), (_tied_bundle, 30, 1)])
def test_fast_curve_equals_reference_at_every_point(strategy, maker, n, seed):
    e = maker(n, 5, seed) if maker is _random_bundle else maker(n, seed)
    order = random_order(n, seed=seed)
    pts = curve_points(21)  # 43 items: segments of unequal length
    fast = evaluate_curve(strategy, e, e, order, points=pts, leave_one_out=True, block_size=7)
    ref = reference_curve(strategy, e, e, order, points=pts, leave_one_out=True)
    _assert_same(fast, ref)


def test_separate_queries_with_exclusion_equal_reference():
    g = _random_bundle(50, 4, 3)
    q = _random_bundle(12, 4, 4)
    exclude = np.array([5, -1, 7, -1, 0, 1, 2, 3, -1, 49, 10, -1])
    pts = np.array([0.0, 0.13, 0.5, 0.77, 1.0])
    order = random_order(50, seed=9)
    fast = evaluate_curve("rt_merge", q, g, order, points=pts, exclude=exclude)
    _assert_same(fast, reference_curve("rt_merge", q, g, order, points=pts, exclude=exclude))


def test_endpoints():
    e = _random_bundle(60, 4, 5)
    order = random_order(60, seed=0)
    pts = curve_points(5)
    rm = evaluate_curve("rank_merge", e, e, order, points=pts, leave_one_out=True)
    old = evaluate_curve("old", e, e, order, points=pts, leave_one_out=True)
    new = evaluate_curve("new", e, e, order, points=pts, leave_one_out=True)
    np.testing.assert_allclose(rm.ap[:, 0], old.ap[:, 0])
    np.testing.assert_allclose(rm.ap[:, -1], new.ap[:, 0])
    np.testing.assert_allclose(old.map, old.map[0])  # old/old does not move
    partial = evaluate_curve("new_partial", e, e, order, points=pts, leave_one_out=True)
    assert partial.map[0] == 0 and partial.top1[0] == 0 and partial.top5[0] == 0
    np.testing.assert_allclose(partial.ap[:, -1], new.ap[:, 0])
    offline = evaluate_curve("offline", e, e, order, points=pts, leave_one_out=True)
    np.testing.assert_allclose(offline.map[:-1], old.map[:-1])
    assert offline.map[-1] == pytest.approx(new.map[0])


def test_leave_one_out_and_queries_without_relevant_items():
    # two items of class 0, one lonely item of class 1, one query of unknown label
    old = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    e = Embeddings(np.array([0, 0, 1, 2]), old=old, new=old)
    curve = evaluate_curve("old", e, e, np.arange(4), points=[0.0], leave_one_out=True)
    assert curve.valid.tolist() == [True, True, False, False]
    assert curve.n_excluded == 2 and curve.n_queries == 2
    assert curve.ap[:2, 0].tolist() == [1.0, 1.0]  # without leave-one-out each query would find itself first
    queries = Embeddings(None, old=old[:1])
    unknown = evaluate_curve("old", queries, e, np.arange(4), points=[0.0])
    assert unknown.n_excluded == 1
    with pytest.raises(ValueError, match="no query has a relevant item"):
        _ = unknown.map


def test_bad_inputs():
    e = _random_bundle(20, 3, 0)
    order = random_order(20, seed=0)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        evaluate_curve("old", e, e, order, points=[1.5])
    with pytest.raises(ValueError, match="not a permutation"):
        evaluate_curve("old", e, e, np.zeros(20, dtype=int), points=[0.5])
    small = Embeddings(e.labels, old=e.old, new=e.new)
    with pytest.raises(ValueError, match="'transformed'"):
        evaluate_curve("rt_merge", small, small, order, points=[0.5])
    other = Embeddings(np.zeros(3, dtype=int), old=np.ones((3, 2)), new=np.ones((3, 2)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        evaluate_curve("old", other, e, order, points=[0.5])
    with pytest.raises(ValueError, match="leave-one-out needs"):
        evaluate_curve("old", other, e, order, points=[0.5], leave_one_out=True)
    with pytest.raises(ValueError, match="exclude"):
        evaluate_curve("old", other, e, order, points=[0.5], exclude=np.array([0, 1, 20]))
    with pytest.raises(ValueError, match="integer >= 2"):
        curve_points(1)


def test_evaluate_strategies_dict():
    e = _random_bundle(40, 4, 2)
    out = evaluate_strategies(
        e, strategies=["rank_merge", "old"], order=random_order(40, seed=0), points=curve_points(6)
    )
    assert out["points"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert set(out["strategies"]) == {"rank_merge", "old"}
    rm = out["strategies"]["rank_merge"]
    for key in ("map", "top1", "top5", "negative_flip"):
        assert len(rm[key]) == 6
    ref = out["reference"]
    assert rm["auc_map"] == pytest.approx(np.mean(rm["map"]))
    gain = (rm["auc_map"] - ref["old_map"]) / (ref["new_map"] - ref["old_map"])
    assert rm["relative_gain"] == pytest.approx(gain)
    assert out["strategies"]["old"]["max_negative_flip"] == 0
    assert rm["map"][-1] == pytest.approx(ref["new_map"])
    everything = evaluate_strategies(e, order=random_order(40, seed=0), points=curve_points(3))
    assert list(everything["strategies"]) == list(STRATEGIES)


def test_evaluate_strategies_names_aliases_and_drops_duplicates():
    e = _random_bundle(30, 3, 4)
    order = random_order(30, seed=1)
    out = evaluate_strategies(e, order=order, strategies=["full", "rt_merge", "full"], points=curve_points(3))
    assert list(out["strategies"]) == ["full", "rt_merge"]
    assert out["strategies"]["full"]["label"] == "full (rt_merge on transformed)"
    assert out["strategies"]["full"]["map"] == out["strategies"]["rt_merge"]["map"]


def test_options_are_keyword_only():
    e = _random_bundle(20, 3, 0)
    order = random_order(20, seed=0)
    with pytest.raises(TypeError):
        evaluate_curve("old", e, e, order, [0.5])
    with pytest.raises(TypeError):
        evaluate_strategies(e, ["old"], order)
    with pytest.raises(TypeError):
        random_order(20, 0)
