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

        rerun = run_cli(*args, scope=scope)
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
