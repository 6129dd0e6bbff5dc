"""The Ray Data re-embedding job: SIGKILL of the driver's process group partway, then a rerun, verified
through a fresh connection; an unreadable image stops the job with one line naming the item."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
from _live_support import (
    SUITE,
    RayScope,
    fresh_rows,
    requires_serve,
    run_cli,
    start_cli,
    stop_embedded,
    wait_for,
)

pytestmark = requires_serve

N = 3000


@pytest.fixture
def scope():
    s = RayScope()
    yield s
    s.close()


def _load(path, n):
    from backfill.cli import main

    assert main(["gallery", "load", "--store", str(path), "--suite", str(SUITE), "--dataset", "fashion_mnist",
                 "--limit", str(n), "--no-progress"]) == 0


def test_sigkill_partway_then_rerun_writes_every_item_once(tmp_path, scope):
    from backfill.datasets import load_dataset
    from backfill.live.gallery import model_tag
    from backfill.live.store import open_store
    from backfill.suite import ModelSuite

    path = tmp_path / "store"
    _load(path, N)
    store = open_store(path)
    try:
        args = ("gallery", "backfill", "--store", str(path), "--suite", str(SUITE), "--batch-size", "20",
                "--workers", "2", "--threads", "1", "--no-progress")
        job = start_cli(*args, scope=scope)
        reached = wait_for(lambda: store.status()["backfilled"] >= N // 10 or job.poll() is not None, timeout=180)
        at_kill = store.status()["backfilled"]
        os.killpg(job.pid, signal.SIGKILL)  # the driver and its whole process group
        job.wait(30)
        assert reached and job.returncode == -signal.SIGKILL, job.stderr.read()[-2000:]
        assert 0 < at_kill < N, f"the kill was not partway ({at_kill}/{N})"
        scope.reap()  # Ray workers outlive the group for a while: stop them before counting what is pending
        after_kill = store.status()["backfilled"]
        assert not store.status()["job_running"]  # the dead driver's writer lock is gone

        rerun = run_cli(*args, "--order", "predicted_gain", scope=scope)  # resumed in another order
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        scheduled = int(re.search(r"wrote (\d+) of (\d+) scheduled", rerun.stdout).group(2))
        assert scheduled == N - after_kill  # resumed from the store: nothing written before is redone

        rows = fresh_rows(store.uri)
        suite = ModelSuite.load(SUITE)
        assert rows["ids"].tolist() == list(range(N))  # every id once, none missing
        assert rows["backfilled"].all() and (rows["writes"] == 1).all()  # each written exactly once
        assert rows["old_rows"] == (N, N) and rows["old_misplaced"] == 0  # each old vector once, moved with its flag
        assert set(rows["models"]) == {model_tag(suite.cards["new"])}
        images = load_dataset("fashion_mnist", "test").images[:N]
        expected = suite.embed_arrays(images)["new"]
        got = np.stack([v.to_numpy() for v in rows["new"]])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    finally:
        store.close()
        stop_embedded(path)


def test_unreadable_image_stops_the_job_with_one_line(tmp_path, scope):
    from backfill.live.store import open_store

    path = tmp_path / "store"
    _load(path, 40)
    store = open_store(path)
    try:
        store.conn.execute("UPDATE backfill.image SET data = 'this is no image' WHERE id = 17")
        res = run_cli("gallery", "backfill", "--store", str(path), "--suite", str(SUITE), "--batch-size", "10",
                      "--no-progress", scope=scope)
        assert res.returncode == 2
        errors = [line for line in res.stderr.splitlines() if line.startswith("backfill gallery: error:")]
        assert errors == ["backfill gallery: error: gallery item 17: image data is not a recognised image file"]
        assert "Traceback" not in res.stderr
        assert store.status()["backfilled"] < 40
        assert not fresh_rows(store.uri)["backfilled"][17]
    finally:
        store.close()
        stop_embedded(path)


def test_actor_pipelines_a_block_and_commits_batch_by_batch(tmp_path):
    """One actor call over a block of six batches (reads and writes overlap the model): an unreadable image in
    the fourth batch stops it with the first three committed and nothing after; the replay writes the rest
    once, each item with the new model's vector."""
    from backfill.datasets import load_dataset
    from backfill.images import ImageLoadError
    from backfill.live.gallery import model_tag
    from backfill.live.job import EmbedAndWrite
    from backfill.live.store import open_store
    from backfill.suite import ModelSuite

    n = 60
    path = tmp_path / "store"
    _load(path, n)
    store = open_store(path)
    suite = ModelSuite.load(SUITE)
    try:
        ids = store.pending_ids(order="random")
        bad = int(ids[35])
        original = store.images([bad])[bad]
        store.conn.execute("UPDATE backfill.image SET data = 'this is no image' WHERE id = %s", (bad,))
        worker = EmbedAndWrite(store.uri, str(SUITE), model_tag(suite.cards["new"]), batch_size=10)
        with pytest.raises(ImageLoadError, match=f"^gallery item {bad}: "):
            worker({"data": ids})
        rows = fresh_rows(store.uri)
        assert set(rows["ids"][rows["backfilled"]].tolist()) == set(ids[:30].tolist())

        store.conn.execute("UPDATE backfill.image SET data = %s WHERE id = %s", (original, bad))
        out = worker({"data": ids})  # the replay skips the three committed batches
        assert out["seen"].tolist() == [n] and out["written"].tolist() == [n - 30]
        rows = fresh_rows(store.uri)
        assert rows["backfilled"].all() and (rows["writes"] == 1).all()
        assert rows["old_rows"] == (n, n) and rows["old_misplaced"] == 0
        expected = suite.embed_arrays(load_dataset("fashion_mnist", "test").images[:n])["new"]
        np.testing.assert_allclose(np.stack([v.to_numpy() for v in rows["new"]]), expected, atol=1e-5, rtol=0)
    finally:
        store.close()
        stop_embedded(path)


def test_actor_yields_to_searches(tmp_path):
    """While searches of the store run (another process's, seen through the server), an actor does each batch's
    read, embedding and write in turn (the next read starts after the last commit); with no search for a second
    (status reads do not count) or with the option off, it reads ahead while writing. Every item is written
    once either way."""
    import threading
    import time

    from backfill.live.gallery import model_tag
    from backfill.live.job import EmbedAndWrite
    from backfill.live.store import open_store
    from backfill.suite import ModelSuite

    path = tmp_path / "store"
    _load(path, 60)
    store, service = open_store(path), open_store(path)
    tag = model_tag(ModelSuite.load(SUITE).cards["new"])

    def in_turn(yield_to_searches: bool, ids: np.ndarray) -> bool:
        worker = EmbedAndWrite(store.uri, str(SUITE), tag, batch_size=5, yield_to_searches=yield_to_searches)
        events = []
        for name, owner in (("pending_images", worker.reader), ("write_new", worker.writer)):
            call = getattr(owner, name)

            def timed(*args, call=call, name=name, **kwargs):
                t = time.perf_counter()
                out = call(*args, **kwargs)
                events.append((name, t, time.perf_counter()))
                return out

            setattr(owner, name, timed)
        assert worker({"data": ids})["written"].tolist() == [ids.size]
        reads = sorted(e for e in events if e[0] == "pending_images")
        writes = sorted(e for e in events if e[0] == "write_new")
        assert len(reads) == len(writes) == ids.size // 5
        # in turn: batch j + 1's read starts after batch j's commit ended
        return all(reads[j + 1][1] >= writes[j][2] for j in range(len(writes) - 1))

    stop = threading.Event()

    def searches():
        rng = np.random.default_rng(0)
        while not stop.is_set():
            q = rng.normal(size=(2, 128)).astype(np.float32)
            service.search(method="full", k=5, q_new=q[0], q_old=q[1])
            time.sleep(0.1)

    try:
        ids = store.pending_ids(order="random")
        service.open_pool(size=2)  # as the service does
        assert not store.searches_running()
        client = threading.Thread(target=searches)
        client.start()
        try:
            time.sleep(0.3)
            assert store.searches_running()
            assert in_turn(True, ids[:20])
            assert not in_turn(False, ids[20:40])
        finally:
            stop.set()
            client.join()
        time.sleep(1.5)
        service.status()
        assert not store.searches_running()
        assert not in_turn(True, ids[40:])
        rows = fresh_rows(store.uri)
        assert rows["backfilled"].all() and (rows["writes"] == 1).all()
    finally:
        service.close()
        store.close()
        stop_embedded(path)
