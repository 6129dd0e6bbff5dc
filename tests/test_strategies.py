import pytest

from backfill.strategies import NEW_SPACE, OLD_SPACE, STRATEGIES, get_strategy


def test_table_of_method_md():
    assert list(STRATEGIES) == ["old", "offline", "new_partial", "bct", "rank_merge", "rt_merge"]
    u, b = get_strategy("rank_merge").sides(0.5)
    assert (u.query, u.gallery, u.space) == ("old", "old", OLD_SPACE)
    assert (b.query, b.gallery, b.space) == ("new", "new", NEW_SPACE)
    u, b = get_strategy("rt_merge").sides(0.5)
    assert (u.query, u.gallery) == ("transformed", "old") and (b.query, b.gallery) == ("new", "new")
    u, b = get_strategy("bct").sides(0.5)
    assert (u.query, u.gallery) == ("bct", "old") and (b.query, b.gallery) == ("bct", "bct")
    u, b = get_strategy("new_partial").sides(0.5)
    assert u is None and (b.query, b.gallery) == ("new", "new")
    assert get_strategy("old").sides(0.3) == get_strategy("old").sides(1.0)


def test_offline_switches_only_at_full():
    s = get_strategy("offline")
    assert all(side.gallery == "old" for side in s.sides(0.99))
    assert all(side.gallery == "new" for side in s.sides(1.0))
    assert s.required_arrays == ("old", "new")


def test_required_arrays():
    assert get_strategy("rt_merge").query_arrays == ("transformed", "new")
    assert get_strategy("rt_merge").gallery_arrays == ("old", "new")
    assert get_strategy("bct").required_arrays == ("bct", "old")


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'full'"):
        get_strategy("full")
    assert get_strategy("new").name == "new"


def test_space_is_one_type_with_int_values_and_labels():
    from backfill.strategies import Space

    assert (Space.OLD, Space.NEW) == (0, 1) and (OLD_SPACE, NEW_SPACE) == (Space.OLD, Space.NEW)
    assert [s.label for s in Space] == ["old", "new"]
    assert all(isinstance(side.space, Space) for s in STRATEGIES.values() for side in s.sides_used)


def test_full_is_a_documented_alias_of_rt_merge():
    from backfill.strategies import ALIASES, resolve_strategy

    full = resolve_strategy("full")
    assert full.name == "full" and full.label == "full (rt_merge on transformed)"
    assert full.sides(0.3) == get_strategy("rt_merge").sides(0.3)
    assert ALIASES["full"].embed_variant == "full" and resolve_strategy("rank_merge") is STRATEGIES["rank_merge"]
    with pytest.raises(ValueError, match="full_rho"):
        resolve_strategy("nope")


def test_runs_on_and_side_dimension_check():
    import numpy as np

    from backfill.embeddings import Embeddings

    assert get_strategy("rt_merge").runs_on(("old", "new", "transformed"))
    assert not get_strategy("rt_merge").runs_on(("old", "new"))
    q = Embeddings(None, old=np.ones((1, 3)))
    g = Embeddings(None, old=np.ones((2, 4)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        get_strategy("old").u.arrays(q, g)
