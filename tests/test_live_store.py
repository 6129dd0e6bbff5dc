"""The pgvector gallery store and the `backfill gallery` commands that need no Ray: loading, refusals and the
one-line errors, conditional writes, one-snapshot searches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _live_support import SUITE, cli_in_process, requires_serve, stop_embedded

pytestmark = requires_serve

N = 300


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("live_store") / "store"
    from backfill.cli import main

    assert main(["gallery", "load", "--store", str(path), "--suite", str(SUITE), "--dataset", "fashion_mnist",
                 "--limit", str(N), "--no-progress"]) == 0
    yield path
    stop_embedded(path)


@pytest.fixture(scope="module")
def store(store_dir):
    from backfill.live.store import open_store

    s = open_store(store_dir)
    yield s
    s.close()


def test_status_json_reports_the_loaded_gallery(store_dir, capsys):
    rc, out, _ = cli_in_process(capsys, "gallery", "status", "--store", str(store_dir), "--json")
    assert rc == 0
    status = json.loads(out)
    assert status["total"] == N and status["d_old"] == 128 and status["d_new"] == 128
    assert status["backfilled"] + status["pending"] == N and not status["job_running"]
    assert status["orders"] == ["random", "old_entropy", "predicted_gain"]  # the suite has a gain predictor


def test_load_into_existing_gallery_needs_replace(store_dir, capsys):
    rc, _, err = cli_in_process(capsys, "gallery", "load", "--store", str(store_dir), "--suite", str(SUITE),
                                "--dataset", "fashion_mnist", "--limit", "10", "--no-progress")
    assert rc == 2
    assert err.strip().count("\n") == 0 and f"already holds a gallery ({N} items)" in err and "--replace" in err


def test_unreachable_store_is_one_line(capsys):
    rc, _, err = cli_in_process(capsys, "gallery", "status", "--store", "postgresql://postgres@127.0.0.1:9/none")
    assert rc == 2
    assert err.startswith("backfill gallery: error: cannot reach the gallery store") and err.count("\n") == 1


def test_missing_store_directory_is_one_line(tmp_path, capsys):
    rc, _, err = cli_in_process(capsys, "gallery", "status", "--store", str(tmp_path / "nothing"))
    assert rc == 2 and "no gallery store in" in err and err.count("\n") == 1


def test_second_writer_is_refused(store_dir, store, capsys):
    with store.writer_lock():
        assert store.status()["job_running"]
        rc, _, err = cli_in_process(capsys, "gallery", "backfill", "--store", str(store_dir), "--suite", str(SUITE))
    assert rc == 2
    assert "another backfill job is writing to this store (one writer at a time)" in err and err.count("\n") == 1
    assert not store.status()["job_running"]


@pytest.mark.parametrize("option", ["--batch-size", "--batches-per-task", "--workers"])
def test_job_sizes_must_be_positive(store_dir, capsys, option):
    rc, _, err = cli_in_process(capsys, "gallery", "backfill", "--store", str(store_dir), "--suite", str(SUITE),
                                option, "0")
    assert rc == 2 and err == f"backfill gallery: error: {option} must be positive, got 0\n"


def test_suite_with_other_dims_is_refused(tmp_path, capsys):
    from backfill.live.service import create_app
    from backfill.live.store import StoreError, open_store

    path = tmp_path / "other"
    other = open_store(path, create=True)
    try:
        other.create(d_old=7, d_new=9, meta={"dataset": "fashion_mnist"})
        other.set_meta("loaded", True)
        rc, _, err = cli_in_process(capsys, "gallery", "backfill", "--store", str(path), "--suite", str(SUITE))
        assert rc == 2 and err.count("\n") == 1
        assert "embed into 128 (old) / 128 (new) dims, but the store holds 7 / 9-dim vectors" in err
        with pytest.raises(StoreError, match="7 / 9-dim"):
            create_app(path, SUITE)
    finally:
        other.close()
        stop_embedded(path)


def test_writes_are_conditional_and_searches_consistent(store):
    """A replayed batch writes nothing; every method returns unique ids, sorted scores, the right spaces."""
    before = store.status()["backfilled"]
    ids = store.pending_ids(order="old_entropy", limit=40)
    assert ids.size == 40
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    assert store.write_new(ids, vecs, model="test") == 40
    assert store.write_new(ids, -vecs, model="again") == 0  # already backfilled: untouched
    assert store.status()["backfilled"] == before + 40
    assert "test" in store.status()["models"] and "again" not in store.status()["models"]  # wrote nothing
    exported = store.export()
    assert np.allclose(exported["new"][ids], vecs, atol=1e-6)
    assert int(exported["backfilled"].sum()) == before + 40
    assert set(np.flatnonzero(~exported["backfilled"])).isdisjoint(ids.tolist())
    q_new, q_old = vecs[0], exported["old"][5]
    for method in ("full", "rank_merge", "old", "new_partial"):
        res = store.search(method=method, k=25, q_new=q_new, q_old=q_old)
        got = [h.id for h in res.hits]
        scores = [h.score for h in res.hits]
        assert len(got) == len(set(got)) == 25 and scores == sorted(scores, reverse=True)
        spaces = {h.space for h in res.hits}
        done = set(np.flatnonzero(exported["backfilled"]).tolist())
        if method == "old":
            assert spaces == {"old"}
        elif method == "new_partial":
            assert spaces == {"new"} and set(got) <= done
        else:
            assert all((h.space == "new") == (h.id in done) for h in res.hits)
    top = store.search(method="new_partial", k=1, q_new=q_new, q_old=None).hits[0]
    assert top.id == ids[0] and top.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("layout", [2, 3])
def test_a_gallery_of_an_older_layout_is_upgraded_in_place(tmp_path, capsys, layout):
    """Layout 3 keeps the writing models in the progress row (a status no longer scans the gallery), layout 4
    adds the predicted_gain order's column. A store of layout 2 or 3 gains what it lacks when first read, with
    its vectors and progress untouched; its items have no predicted gain, so that order is refused in one line."""
    from backfill.cli import main
    from backfill.live.store import SCHEMA_VERSION, open_store

    path = tmp_path / "store"
    assert main(["gallery", "load", "--store", str(path), "--suite", str(SUITE), "--dataset", "fashion_mnist",
                 "--limit", "30", "--no-progress"]) == 0
    store = open_store(path)
    try:
        assert store.status()["models"] == []
        vecs = np.eye(128, dtype=np.float32)[:10]
        assert store.write_new(np.arange(10), vecs, model="m1") == 10
        assert store.write_new(np.arange(10, 15), vecs[:5], model="m0") == 5
        assert store.status()["models"] == ["m0", "m1"]
        store.conn.execute("ALTER TABLE backfill.gallery DROP COLUMN predicted_gain")  # back to layout 3
        store.conn.execute("DELETE FROM backfill.meta WHERE key = 'orders'")
        if layout == 2:
            store.conn.execute("ALTER TABLE backfill.progress DROP COLUMN models")
        store.conn.execute("UPDATE backfill.meta SET value = %s::jsonb WHERE key = 'schema'", (str(layout),))
        store.close()

        upgraded = open_store(path)
        status = upgraded.status()
        assert status["models"] == ["m0", "m1"] and status["backfilled"] == 15 and status["total"] == 30
        assert status["orders"] == ["random", "old_entropy"]
        assert upgraded.meta()["schema"] == SCHEMA_VERSION == 4
        assert upgraded.write_new(np.arange(15, 20), vecs[:5], model="m1") == 5
        assert upgraded.status()["models"] == ["m0", "m1"] and upgraded.status()["backfilled"] == 20
        assert np.allclose(upgraded.export()["new"][:10], vecs)
        assert upgraded.conn.execute("SELECT count(predicted_gain) FROM backfill.gallery").fetchone()[0] == 0
        upgraded.close()
        rc, _, err = cli_in_process(capsys, "gallery", "backfill", "--store", str(path), "--suite", str(SUITE),
                                    "--order", "predicted_gain")
        assert rc == 2 and err.count("\n") == 1
        assert "loaded without the predicted_gain order's priorities" in err and "random or old_entropy" in err
    finally:
        store.close()
        stop_embedded(path)


def test_the_predicted_gain_order_is_the_suites_predictor_on_the_stored_old_vectors(store):
    """The gallery was loaded with a suite that has a gain predictor: its column holds that predictor's output on
    the stored old vectors, and the order serves the pending items by it, largest first."""
    from backfill.suite import ModelSuite

    rows = store.conn.execute("SELECT id, predicted_gain, backfilled FROM backfill.gallery ORDER BY id").fetchall()
    ids, gains, done = (np.array(column) for column in zip(*rows, strict=True))
    old = store.export()["old"]
    np.testing.assert_allclose(gains, ModelSuite.load(SUITE).gain_predictor.priority(old), rtol=1e-5, atol=1e-5)
    pending = ids[~done]
    expected = pending[np.lexsort((pending, -gains[~done]))]
    np.testing.assert_array_equal(store.pending_ids(order="predicted_gain"), expected)
    assert not np.array_equal(expected, store.pending_ids(order="old_entropy"))


def test_exact_sides_use_parallel_workers_only_when_big(store):
    from backfill.live.sql import exact_side_workers

    sizes = {"old": 30_000, "new": 500}
    assert exact_side_workers(sizes, [], workers=2, min_rows=20_000) == 2
    assert exact_side_workers(sizes, ["old"], workers=2, min_rows=20_000) == 0  # the big side goes by index
    assert exact_side_workers(sizes, ["old", "new"], workers=2, min_rows=20_000) == 0
    assert exact_side_workers({"old": 100, "new": 19_999}, [], workers=2, min_rows=20_000) == 0
    # Both plans give the same answers (this gallery is small: force the parallel one).
    q_new, q_old = store.export()["old"][1], store.export()["old"][2]
    serial = store.search(method="full", k=15, q_new=q_new, q_old=q_old)
    store.parallel_min_rows = 0
    try:
        assert store.search(method="full", k=15, q_new=q_new, q_old=q_old) == serial
    finally:
        store.parallel_min_rows = type(store).parallel_min_rows


def _hnsw_indexes(store) -> set[str]:
    return {r[0] for r in store.conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'backfill' "
                                             "AND indexdef LIKE '%hnsw%'").fetchall()}


def _ann_recall(store, vecs: np.ndarray, done: set[int]) -> float:
    """Mean recall@20 of ANN ``full`` searches against exact ones; each search returns 20 unique rows, sorted,
    with the right space per row."""
    from backfill.live.store import PgVectorStore

    recalls = []
    store.ann_min_rows = 0  # this gallery is small: without this, both sides would be scanned exactly
    try:
        for q in range(10):
            q_new, q_old = vecs[q], store.export()["old"][q * 7]
            store.ann = False
            exact = [h.id for h in store.search(method="full", k=20, q_new=q_new, q_old=q_old).hits]
            store.ann = True
            res = store.search(method="full", k=20, q_new=q_new, q_old=q_old)
            got = [h.id for h in res.hits]
            assert len(got) == len(set(got)) == 20
            assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
            assert all((h.space == "new") == (h.id in done) for h in res.hits)
            recalls.append(len(set(got) & set(exact)) / 20)
    finally:
        store.ann, store.ann_min_rows = False, PgVectorStore.ann_min_rows
    return float(np.mean(recalls))


def test_hnsw_search_returns_k_rows_close_to_exact(store_dir, store, capsys):
    """With an HNSW index on the pending old vectors (`gallery index --side old`, the one to keep during a
    job) and rows moved out of that partition afterwards (its index still lists them), iterative scans still
    return k unique rows per search, close to exact; the same once the new side is indexed too."""
    from backfill.cli import main
    from backfill.live.store import StoreError

    assert main(["gallery", "index", "--store", str(store_dir), "--m", "1"]) == 2
    assert "HNSW m must be in [2, 100], got 1" in capsys.readouterr().err
    assert main(["gallery", "index", "--store", str(store_dir), "--m", "40"]) == 2  # ef_construction 64 < 2 m
    assert "HNSW ef_construction must be in [max(4, 2 m), 1000] = [80, 1000], got 64" in capsys.readouterr().err
    with pytest.raises(StoreError, match="HNSW sides must be among old, new, got middle"):
        store.build_hnsw(sides=("middle",))
    assert main(["gallery", "index", "--store", str(store_dir), "--side", "old"]) == 0
    assert "HNSW index on old vectors built" in capsys.readouterr().out
    assert _hnsw_indexes(store) == {"vec_old_pending_hnsw"}
    ids = store.pending_ids(order="random", limit=60)
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(60, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    assert store.write_new(ids, vecs, model="test") == 60
    done = set(np.flatnonzero(store.export()["backfilled"]).tolist())
    assert _ann_recall(store, vecs, done) >= 0.9  # the new side, not indexed, is scanned exactly
    # Sides below ann_min_rows are scanned exactly even with ann (an index of mostly moved rows late in a job
    # costs more to walk than the partition to scan): on this small gallery, ANN answers are the exact ones.
    q_new, q_old = vecs[0], store.export()["old"][3]
    exact = store.search(method="full", k=20, q_new=q_new, q_old=q_old)
    store.ann = True
    try:
        assert store.search(method="full", k=20, q_new=q_new, q_old=q_old) == exact
    finally:
        store.ann = False

    assert main(["gallery", "index", "--store", str(store_dir)]) == 0
    assert "HNSW index on old and new vectors built" in capsys.readouterr().out
    assert _hnsw_indexes(store) == {"vec_old_pending_hnsw", "vec_new_hnsw"}
    assert _ann_recall(store, vecs, done) >= 0.9
