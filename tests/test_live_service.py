"""The FastAPI search service on a real uvicorn (127.0.0.1): mid-job top-k equal to the engine's at the same
backfilled set, consistent answers while the Ray job runs, and the export's mAP equal to the engine's new/new
once the job is complete."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from _live_support import SUITE, RayScope, requires_serve, start_cli, stop_embedded

pytestmark = requires_serve

N = 1500
QUERIES = range(5000, 5012)  # test-split images outside the gallery, uploaded as PNG


def _png(image: np.ndarray) -> bytes:
    from backfill.live.gallery import encode_image

    return encode_image(image)


@pytest.fixture(scope="module")
def data():
    from backfill.datasets import load_dataset
    from backfill.suite import ModelSuite

    ds = load_dataset("fashion_mnist", "test")
    suite = ModelSuite.load(SUITE)
    return {"suite": suite, "images": ds.images[:N], "labels": ds.labels[:N],
            "queries": [_png(ds.images[i]) for i in QUERIES]}


@pytest.fixture(scope="module")
def live(tmp_path_factory, data):
    """A gallery of N items with its first 400 (random order) backfilled by the job's own actor code, served
    by uvicorn on a free loopback port."""
    import httpx
    import uvicorn

    from backfill.cli import main
    from backfill.live.gallery import model_tag
    from backfill.live.job import EmbedAndWrite
    from backfill.live.service import create_app
    from backfill.live.store import open_store

    path = tmp_path_factory.mktemp("live_service") / "store"
    assert main(["gallery", "load", "--store", str(path), "--suite", str(SUITE), "--dataset", "fashion_mnist",
                 "--limit", str(N), "--no-progress"]) == 0
    store = open_store(path)
    worker = EmbedAndWrite(store.uri, str(SUITE), model_tag(data["suite"].cards["new"]))
    for batch in np.array_split(store.pending_ids(order="random", limit=400), 4):
        worker({"data": batch})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch

    threads = torch.get_num_threads()  # create_app sets 1 for this process: restored for the other tests
    server = uvicorn.Server(uvicorn.Config(create_app(path, SUITE), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    yield {"path": path, "store": store, "client": client}
    client.close()
    server.should_exit = True
    thread.join(30)
    torch.set_num_threads(threads)
    store.close()
    stop_embedded(path)


def _search(client, png: bytes, method: str, k: int = 10) -> dict:
    r = client.post("/search", params={"k": k, "method": method}, files={"image": ("q.png", png, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(("method", "strategy", "variant"), [("full", "rt_merge", "full"),
                                                            ("rank_merge", "rank_merge", "base"),
                                                            ("old", "old", "base"),
                                                            ("new_partial", "new_partial", "base")])
def test_midjob_topk_equals_the_engine(live, data, method, strategy, variant):
    from backfill.indexing import BackfillIndex

    exported = live["store"].export()
    done = np.flatnonzero(exported["backfilled"])
    assert done.size == 400
    suite = data["suite"]
    gallery = suite.embed(data["images"], data["labels"])[variant]
    queries = suite.embed(data["queries"])[variant]
    order = np.concatenate([done, np.flatnonzero(~exported["backfilled"])])
    engine = BackfillIndex(gallery, order).search(strategy, queries, done.size / N, k=10)
    for q, png in enumerate(data["queries"]):
        body = _search(live["client"], png, method)
        assert body["backfilled"] == 400 and body["total"] == N
        ids = [h["id"] for h in body["results"]]
        scores = np.array([h["score"] for h in body["results"]])
        np.testing.assert_allclose(scores, engine.scores[q], atol=1e-5)
        near_tie = np.abs(scores - engine.scores[q]) > 1e-5  # none expected; a tie could swap equal scores
        assert ids == engine.ids[q].tolist() or not near_tie.any() and sorted(ids) == sorted(engine.ids[q])
        spaces = ["new" if s else "old" for s in engine.spaces[q]]
        assert [h["space"] for h in body["results"]] == spaces


def test_bad_requests_get_clear_errors(live):
    client = live["client"]
    r = client.post("/search", files={"image": ("broken.png", b"not an image at all", "image/png")})
    assert r.status_code == 400 and r.json()["detail"] == "broken.png: image data is not a recognised image file"
    r = client.post("/search", params={"method": "nope"}, files={"image": ("q.png", b"x", "image/png")})
    assert r.status_code == 422
    assert client.get("/docs").status_code == 200
    assert set(client.get("/openapi.json").json()["paths"]) >= {"/search", "/status"}


def test_searches_during_the_job_then_export_map_equals_new_new(live, data, tmp_path):
    from backfill.embeddings import Embeddings
    from backfill.evaluation import evaluate_curve

    client, path = live["client"], live["path"]
    scope = RayScope()
    try:
        job = start_cli("gallery", "backfill", "--store", str(path), "--suite", str(SUITE), "--batch-size", "25",
                        "--workers", "1", "--threads", "1", "--no-progress", scope=scope)
        seen, png = [], data["queries"][0]
        deadline = time.monotonic() + 240
        while job.poll() is None and time.monotonic() < deadline:
            for method in ("full", "rank_merge"):
                body = _search(client, png, method, k=20)
                ids = [h["id"] for h in body["results"]]
                scores = [h["score"] for h in body["results"]]
                assert len(ids) == len(set(ids)) == 20 and scores == sorted(scores, reverse=True)
                seen.append(body["backfilled"])
        out, err = job.communicate(timeout=240)
        assert job.returncode == 0, err[-3000:]
    finally:
        scope.close()
    assert seen == sorted(seen), "backfilled went backwards between searches"
    assert any(400 < s < N for s in seen), f"no search landed while items were being written: {sorted(set(seen))}"
    assert client.get("/status").json()["backfilled"] == N

    from backfill.cli import main

    out = tmp_path / "emb.npz"
    assert main(["gallery", "export", "--store", str(path), "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["backfilled"].all() and f["ids"].tolist() == list(range(N))
        exported = Embeddings(f["labels"], old=f["old"], new=f["new"])
    reference = data["suite"].embed(data["images"], data["labels"])["base"]
    got = evaluate_curve("new", exported, exported, np.arange(N), points=[1.0], leave_one_out=True).map[0]
    want = evaluate_curve("new", reference, reference, np.arange(N), points=[1.0], leave_one_out=True).map[0]
    assert got == pytest.approx(want, abs=1e-6)


def test_serve_stopped_by_sigterm_stops_its_embedded_server(tmp_path):
    """`backfill serve` ended by SIGTERM (systemd, docker, kill) releases its embedded PostgreSQL: uvicorn
    re-raises the signal after its shutdown, which skips the exit hook, and the server used to run on."""
    import signal
    import subprocess
    import sys
    import urllib.request

    import psutil

    store = tmp_path / "store"  # loaded by another process: this one never holds the server
    subprocess.run([sys.executable, "-m", "backfill.cli", "gallery", "load", "--store", str(store), "--suite",
                    str(SUITE), "--dataset", "fashion_mnist", "--limit", "20", "--no-progress"], check=True,
                   capture_output=True, timeout=300)
    pidfile = store / "pgdata" / "postmaster.pid"
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        serve = subprocess.Popen([sys.executable, "-m", "backfill.cli", "serve", "--store", str(store), "--suite",
                                  str(SUITE), "--port", str(port)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert serve.poll() is None and time.monotonic() < deadline, "backfill serve did not start"
                time.sleep(0.3)
        postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        postmaster.wait(30)  # psutil.TimeoutExpired if the server outlived the last process using it
    finally:
        stop_embedded(store)
