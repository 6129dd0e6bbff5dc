"""The Streamlit page pages/live.py (AppTest) against a real embedded store: status while a job holds the
store, searches by gallery item with every method (the store's own top-k), and the one-line errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _live_support import ROOT, SUITE, requires_serve, stop_embedded

pytestmark = requires_serve

N = 60
DONE = 20
PAGE = str(ROOT / "pages" / "live.py")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A gallery of N items, DONE of them backfilled with the suite's new model (no Ray: the job's write)."""
    import streamlit as st

    from backfill.cli import main
    from backfill.images import load_image
    from backfill.live.gallery import embed_new, model_tag
    from backfill.live.store import open_store
    from backfill.suite import ModelSuite

    path = tmp_path_factory.mktemp("live_watch") / "store"
    assert main(["gallery", "load", "--store", str(path), "--suite", str(SUITE), "--dataset", "fashion_mnist",
                 "--limit", str(N), "--no-progress"]) == 0
    store = open_store(path)
    suite = ModelSuite.load(SUITE)
    rows = store.pending_images(store.pending_ids(order="random", limit=DONE))
    store.write_new(np.array([r[0] for r in rows]), embed_new(suite, [load_image(r[1]) for r in rows]),
                    model=model_tag(suite.cards["new"]))
    yield {"path": path, "store": store, "suite": suite}
    st.cache_resource.clear()  # the page's cached store handle holds connections to this server
    store.close()
    stop_embedded(path)


def _page(monkeypatch, location: str, *, refresh: bool = True):
    from streamlit.testing.v1 import AppTest

    from backfill.live.watch import STORE_ENV

    monkeypatch.setenv(STORE_ENV, location)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["refresh"] = refresh
    return at.run()


def test_status_then_searches_by_item_with_every_method(live, monkeypatch):
    from backfill.images import load_image
    from backfill.live.service import query_vectors
    from backfill.live.store import METHODS

    store = live["store"]
    with store.writer_lock():  # as if a job were running (no refresh: a test run cannot be interrupted)
        at = _page(monkeypatch, str(live["path"]), refresh=False)
        assert not at.exception and not at.error, [e.value for e in at.error]
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["items"] == f"{N}" and metrics["backfilled"] == f"{DONE}" and metrics["job"] == "running"
    assert at.text_input[1].value == str(SUITE)  # the suite the gallery was loaded with

    at.number_input[0].set_value(7)
    query = load_image(store.images([7])[7])
    for method in METHODS:
        at.selectbox[0].select(method)
        at.button[0].click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        shown = at.dataframe[0].value
        q_new, q_old = query_vectors(live["suite"], query, method)
        want = store.search(method=method, k=10, q_new=q_new, q_old=q_old).hits
        assert shown["id"].tolist() == [h.id for h in want]
        assert shown["space"].tolist() == [h.space for h in want]
        np.testing.assert_allclose(shown["score"].to_numpy(), [h.score for h in want], atol=1e-6)
        if method == "old":
            assert shown["id"].iloc[0] == 7 and shown["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)  # itself
    assert "20 / 60 backfilled" in " ".join(c.value for c in at.caption)


def test_status_refreshes_until_the_job_ends(live, monkeypatch):
    """While a job holds the store, the page's last step refreshes the status in place; it ends, showing
    the job idle, once the job releases the store."""
    import threading

    held, release = threading.Event(), threading.Event()

    def job() -> None:
        from backfill.live.store import open_store

        with open_store(live["path"]) as other, other.writer_lock():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=job)
    thread.start()
    assert held.wait(30)
    threading.Timer(5.0, release.set).start()
    t = time.monotonic()
    at = _page(monkeypatch, str(live["path"]))
    elapsed = time.monotonic() - t
    thread.join()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert elapsed >= 4.0, f"the page returned after {elapsed:.1f} s, while the job still held the store"
    assert {m.label: m.value for m in at.metric}["job"] == "idle"


def test_one_line_errors(live, monkeypatch, tmp_path):
    store = live["store"]
    cases = {"postgresql://postgres@127.0.0.1:9/none": "cannot reach the gallery store",
             str(tmp_path / "nothing"): "no gallery store in"}
    store.conn.execute("DROP DATABASE IF EXISTS empty")
    store.conn.execute("CREATE DATABASE empty")  # a reachable server without a gallery
    cases[store.uri.replace("/postgres?", "/empty?")] = "the store holds no gallery"
    for location, message in cases.items():
        at = _page(monkeypatch, location)
        assert not at.exception
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and errors[0].startswith(message) and "\n" not in errors[0], errors

    sha = store.meta()["old_model_sha256"]
    store.set_meta("old_model_sha256", "0" * 64)  # a gallery made by another old model than the suite's
    try:
        at = _page(monkeypatch, str(live["path"]))
        at.button[0].click().run()
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "old vectors were made by old model 000000000000" in errors[0], errors
    finally:
        store.set_meta("old_model_sha256", sha)
