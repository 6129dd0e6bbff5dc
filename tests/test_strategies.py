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
