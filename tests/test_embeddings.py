import numpy as np
import pytest

from backfill.embeddings import Embeddings, l2_normalize


def _bundle(n=6, seed=0, **extra):
    rng = np.random.default_rng(seed)
    old, new = rng.normal(size=(n, 4)) * 3, rng.normal(size=(n, 5))
    return Embeddings(rng.integers(0, 3, n), old=old, new=new, **extra)


def test_arrays_are_unit_float32_contiguous():
    e = _bundle()
    for name in ("old", "new"):
        arr = getattr(e, name)
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-6)
    assert e.labels.dtype == np.int64 and e.n == 6 and e.available == ("old", "new")


def test_query_only_bundle_has_unknown_labels():
    e = Embeddings(None, new=np.ones((2, 3)))
    assert e.labels.tolist() == [-1, -1] and e.available == ("new",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"old": np.array([[np.nan, 1.0]])}, "NaN or infinite"),
        ({"old": np.array([[np.inf, 1.0]])}, "NaN or infinite"),
        ({"old": np.zeros((0, 3))}, "empty"),
        ({"old": np.zeros((2, 3))}, "zero norm"),
        ({"old": np.ones(3)}, "2-D"),
        ({"old": np.ones((2, 3)), "new": np.ones((3, 3))}, "different numbers of rows"),
        ({"old": np.ones((2, 3)), "transformed": np.ones((2, 4))}, "'transformed' has dimension 4"),
        ({"old": np.ones((2, 3)), "bct": np.ones((2, 2))}, "'bct' has dimension 2"),
        ({}, "no embedding array"),
    ],
)
def test_bad_arrays_are_rejected(kwargs, match):
    labels = np.zeros(2, dtype=int)
    with pytest.raises(ValueError, match=match):
        Embeddings(labels, **kwargs)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="labels: has 3 entries"):
        Embeddings(np.zeros(3, dtype=int), old=np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels: expected integers"):
        Embeddings(np.array([0.5, 1.0]), old=np.ones((2, 3)))


def test_require_names_every_missing_array():
    e = _bundle()
    e.require(["old", "new"])
    with pytest.raises(ValueError, match="'transformed', 'bct' needed by strategy X"):
        e.require(["old", "transformed", "bct"], purpose="strategy X")
    with pytest.raises(ValueError, match="missing embedding array 'bct'"):
        e.array("bct")


def test_save_load_round_trip(tmp_path):
    e = _bundle(transformed=np.ones((6, 4)))
    path = tmp_path / "emb.npz"
    e.save(path)
    back = Embeddings.load(path)
    assert back.available == ("old", "new", "transformed")
    np.testing.assert_array_equal(back.labels, e.labels)
    np.testing.assert_array_equal(back.old, e.old)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Embeddings.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "nolabels.npz", old=np.ones((2, 3)))
    with pytest.raises(ValueError, match="no 'labels' array"):
        Embeddings.load(tmp_path / "nolabels.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        Embeddings.load(tmp_path / "junk.npz")


def test_l2_normalize_and_subset():
    x = l2_normalize(np.array([[3.0, 4.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8]], rtol=1e-6)
    e = _bundle().subset(np.array([1, 3]))
    assert e.n == 2 and e.old.shape == (2, 4)


@pytest.mark.parametrize("kind", ["text", "npy", "object"])
def test_load_rejects_files_that_are_not_bundles_in_one_line(tmp_path, kind):
    path = tmp_path / "emb.npz"
    if kind == "text":
        path.write_text("labels old\n0 1.0\n")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones((2, 3)))
    else:
        np.savez(path, labels=np.array([0, 1]), old=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError) as info:
        Embeddings.load(path)
    message = str(info.value)
    assert "\n" not in message and "pickle" not in message and str(path) in message
    if kind == "object":
        assert "'old'" in message
