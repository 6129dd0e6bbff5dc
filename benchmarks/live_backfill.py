"""Live backfilling on this machine: job throughput against the model alone, search latency idle and during
the job, and the store alone at a synthetic scale (exact and HNSW with recall).

    python benchmarks/live_backfill.py --synthetic 0 --hnsw 0          # Fashion-MNIST train+test (70,000 items)
    python benchmarks/live_backfill.py --synthetic 0 --hnsw 0 --ann both --m 8 --ef-construction 32   # the README's
    python benchmarks/live_backfill.py --synthetic 0 --hnsw 0 --variants '' '--batches-per-task 1'   # job options
    python benchmarks/live_backfill.py --skip-gallery --synthetic 1000000 --hnsw 100000   # the store alone
    python benchmarks/live_backfill.py --store postgresql://u:p@host/scratch --ray-address auto   # a server, a cluster

Parts:
1. model alone: the same images (PNG bytes in memory), decoded and embedded by the new model with the same
   batch size, process count and torch threads as the job, no store, no Ray; and within it, the embedding
   alone (the model's share: the job decodes in its reader thread, beside the model, so only this bounds it);
2. the job (`backfill gallery backfill`) on the first half of the gallery, the service up but idle, in
   rounds of one run per --variants entry (job options; default: the job's defaults, and the job pipelined
   even while the service answers searches): steady items/s from the first to the last write seen in the
   store (and wall time with Ray's start-up), each run against the mean of the model alone right before and
   right after its round;
3. search latency through the HTTP service (`backfill serve`, method full, k=10): idle, then while the job
   backfills the second half, again in rounds of one run per variant;
4. the store alone on random unit vectors: exact search (both sides, half backfilled) at --synthetic items,
   and HNSW (iterative scan) at --hnsw items with recall@10 against exact.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "pretrained" / "fashion_mnist" / "homogeneous"


def _pct(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def load_fashion_mnist(store, suite, *, progress: bool = True) -> list[bytes]:
    """Train (ids 0..59999) + test (60000..69999) into ``store``; returns the PNG bytes in id order."""
    from backfill.datasets import load_dataset
    from backfill.live.gallery import encode_image, model_tag
    from backfill.ordering import random_order

    parts = [load_dataset("fashion_mnist", split) for split in ("train", "test")]
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    n = len(images)
    store.create(d_old=128, d_new=128, replace=True,
                 meta={"dataset": "fashion_mnist", "split": "train+test",
                       "old_model_sha256": suite.cards["old"]["weights_sha256"],
                       "new_model": model_tag(suite.cards["new"])})
    rank = np.empty(n, dtype=np.int64)
    rank[random_order(n, seed=0)] = np.arange(n)
    pngs: list[bytes] = []
    for start in range(0, n, 5000):
        stop = min(start + 5000, n)
        old = suite.embed_arrays(images[start:stop], batch_size=500)["old"]
        batch_png = [encode_image(im) for im in images[start:stop]]
        pngs += batch_png
        store.add_items(ids=np.arange(start, stop), labels=labels[start:stop],
                        refs=[f"fashion_mnist/{'train' if i < 60000 else 'test'}/{i % 60000}"
                              for i in range(start, stop)],
                        images=batch_png, old=old, priority=suite.old_entropy_priority(old),
                        random_rank=rank[start:stop])
        if progress:
            print(f"  loaded {stop}/{n}", file=sys.stderr)
    store.set_meta("loaded", True)
    return pngs


def embed_pngs(suite, pngs: Sequence[bytes], batch_size: int) -> tuple[float, float]:
    """Decode and embed ``pngs`` with the suite's new model, ``batch_size`` at a time (the job's model work, no
    store); returns the seconds it took in all, and those of the embedding alone (decoded images in, vectors
    out: the model's share, which no pipelining of the decoding can beat with one model thread)."""
    from backfill.images import load_image, preprocess
    from backfill.live.gallery import embed_new_input

    start, model = time.perf_counter(), 0.0
    for i in range(0, len(pngs), batch_size):
        x = preprocess([load_image(p) for p in pngs[i:i + batch_size]], suite.dataset)
        t = time.perf_counter()
        embed_new_input(suite, x)
        model += time.perf_counter() - t
    return time.perf_counter() - start, model


def _model_worker(args: tuple) -> tuple[float, float]:
    """Decode + embed a share of the images with the new model; returns :func:`embed_pngs`'s seconds (model
    load excluded)."""
    pngs, batch_size, threads, barrier = args
    import torch

    from backfill.suite import ModelSuite

    torch.set_num_threads(threads)
    suite = ModelSuite.load(SUITE)
    barrier.wait()
    return embed_pngs(suite, pngs, batch_size)


def model_alone(pngs: list[bytes], *, workers: int, batch_size: int, threads: int) -> tuple[float, float]:
    """Items/s of the new model alone in ``workers`` processes (same batching as the job): decoding and
    embedding, and the embedding alone."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(workers)
        shares = [pngs[w::workers] for w in range(workers)]
        with ctx.Pool(workers) as pool:
            seconds = pool.map(_model_worker, [(s, batch_size, threads, barrier) for s in shares])
    return len(pngs) / max(s[0] for s in seconds), len(pngs) / max(s[1] for s in seconds)


def _rotated(items: list, r: int) -> list:
    """``items`` rotated left by ``r`` (round ``r``'s run order: each variant goes first in turn)."""
    r %= len(items)
    return items[r:] + items[:r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search_loop(client, png: bytes, *, stop, interval: float = 0.0) -> dict[str, list[float]]:
    """HTTP searches until ``stop()``: client latency and the service's own embed / SQL timings (seconds)."""
    out = {"http": [], "embed": [], "sql": [], "start": []}
    while not stop():
        t = time.perf_counter()
        out["start"].append(t)
        r = client.post("/search", params={"k": 10, "method": "full"}, files={"image": ("q.png", png, "image/png")})
        out["http"].append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        out["embed"].append(r.json()["timing_ms"]["embed"] / 1e3)
        out["sql"].append(r.json()["timing_ms"]["search"] / 1e3)
        if interval:
            time.sleep(interval)
    return out


def _backfilled(store) -> int:
    """The progress count alone: one row, cheap to poll ten times a second (``status()`` also reads the
    metadata and the lock table)."""
    return store.conn.execute("SELECT backfilled FROM backfill.progress").fetchone()[0]


def run_job(store_dir: str, *, limit: int | None, workers: int, batch_size: int, threads: int, store,
            ray_address: str | None = None, options: Sequence[str] = (), during=None) -> dict:
    """Run the job CLI (extra ``options``); poll the store for its steady rate; ``during()`` runs meanwhile
    (returns its result)."""
    cmd = [sys.executable, "-m", "backfill.cli", "gallery", "backfill", "--store", str(store_dir), "--suite",
           str(SUITE), "--workers", str(workers), "--batch-size", str(batch_size), "--threads", str(threads),
           "--no-progress", *options] + (
           ["--limit", str(limit)] if limit else []) + (["--ray-address", ray_address] if ray_address else [])
    start_done = _backfilled(store)
    t0 = time.perf_counter()
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    result = None
    if during is not None:
        import threading

        box = {}
        th = threading.Thread(target=lambda: box.setdefault("r", during(lambda: job.poll() is not None)))
        th.start()
    while job.poll() is None:
        samples.append((time.perf_counter(), _backfilled(store)))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    out, err = job.communicate()
    if job.returncode != 0:
        raise RuntimeError(f"job failed: {err[-2000:]}")
    samples.append((time.perf_counter(), _backfilled(store)))
    if during is not None:
        th.join()
        result = box.get("r")
    moving = [(t, d) for t, d in samples if d > start_done]
    first = next(((t, d) for t, d in samples if d > start_done), None)
    last = next((s for s in moving if s[1] == moving[-1][1]), moving[-1])  # first time the final count is seen
    steady = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
    if result is not None:  # only searches that started while the job was writing (not during Ray's start-up)
        keep = [first[0] <= t <= last[0] for t in result["start"]]
        result = {key: [v for v, k in zip(values, keep, strict=True) if k] for key, values in result.items()}
    return {"items": samples[-1][1] - start_done, "wall": wall, "steady": steady, "during": result}


def _ann_recall(store, pairs, *, k: int = 10) -> float:
    """Mean recall@k of the store's ANN ``full`` search against its exact one over ``pairs`` of
    ``(q_new, q_old)`` query vectors."""
    hits = []
    try:
        for q_new, q_old in pairs:
            found = {}
            for ann in (False, True):
                store.ann = ann
                found[ann] = {h.id for h in store.search(method="full", k=k, q_new=q_new, q_old=q_old).hits}
            hits.append(len(found[True] & found[False]) / k)
    finally:
        store.ann = False
    return float(np.mean(hits))


def _gallery_pairs(store, *, queries: int, seed: int = 0) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """``queries`` random gallery items' own vectors as ``(q_new, q_old)`` pairs (no new one while pending)."""
    emb = store.export()
    picked = np.random.default_rng(seed).choice(len(emb["ids"]), size=queries, replace=False)
    return [(emb["new"][i] if emb["backfilled"][i] else None, emb["old"][i]) for i in picked]


def synthetic(n: int, *, hnsw: bool, store_uri: str | None = None, queries: int = 30, seed: int = 0) -> dict:
    """The store alone: n random unit vectors (128-d both spaces), half backfilled; exact (and HNSW) search."""
    from backfill.live.store import open_store

    rng = np.random.default_rng(seed)
    store = open_store(store_uri or Path(tempfile.mkdtemp(prefix="live_bench_syn")) / "store", create=True)
    store.create(d_old=128, d_new=128, meta={"dataset": "synthetic"}, replace=True)
    t = time.perf_counter()
    chunk = 50_000
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        old = rng.standard_normal((stop - start, 128), dtype=np.float32)
        old /= np.linalg.norm(old, axis=1, keepdims=True)
        store.add_items(ids=np.arange(start, stop), labels=np.zeros(stop - start, np.int64),
                        refs=[""] * (stop - start), images=[b""] * (stop - start), old=old,
                        priority=np.zeros(stop - start), random_rank=np.arange(start, stop))
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, n // 2, chunk):
        stop = min(start + chunk, n // 2)
        new = rng.standard_normal((stop - start, 128), dtype=np.float32)
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        store.write_new(np.arange(start, stop), new, model="synthetic")
    write_rate = (n // 2) / (time.perf_counter() - t)
    for table in ("gallery", "vec_old_pending", "vec_old_done", "vec_new"):
        store.conn.execute(f"VACUUM ANALYZE backfill.{table}")
    qs = rng.standard_normal((queries, 2, 128), dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=2, keepdims=True)

    def run(ann: bool) -> list[float]:
        store.ann = ann
        lat = []
        for q in qs:
            t0 = time.perf_counter()
            store.search(method="full", k=10, q_new=q[0], q_old=q[1])
            lat.append(time.perf_counter() - t0)
        store.ann = False
        return lat

    run(False)  # warm the cache
    exact_lat = run(False)
    out = {"n": n, "load_s": load_s, "write_rate": write_rate, "exact": _pct(exact_lat)}
    if hnsw:
        t = time.perf_counter()
        store.build_hnsw()
        out["hnsw_build_s"] = time.perf_counter() - t
        run(True)
        out["hnsw"] = _pct(run(True))
        out["recall"] = _ann_recall(store, [(q[0], q[1]) for q in qs])
        # Write cost with the indexes maintained (the backfill's main risk at scale, live-backfill-notes.md).
        t = time.perf_counter()
        m = min(5000, n // 2)
        new = rng.standard_normal((m, 128), dtype=np.float32)
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        for start in range(0, m, 500):
            store.write_new(np.arange(n // 2 + start, n // 2 + start + 500), new[start:start + 500], model="synthetic")
        out["write_rate_hnsw"] = m / (time.perf_counter() - t)
    store.close()
    server = store.server
    if server is not None:
        server.cleanup()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1, help="job actors and model-alone processes (default 1, the job's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (job actors and baseline)")
    p.add_argument("--variants", nargs="+", default=["", "--no-yield-to-searches"], metavar="OPTIONS",
                   help="job options compared in every round, one string per variant (default: the job's "
                        "defaults, and pipelined even during searches: '' '--no-yield-to-searches')")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the first half: the model alone, then one "
                                                          "job run per variant (and the model alone at the end)")
    p.add_argument("--during-rounds", type=int, default=2, help="rounds over the second half, with searches")
    p.add_argument("--searches", type=int, default=300, help="idle searches")
    p.add_argument("--synthetic", type=int, default=1_000_000, help="store-alone items (0: skip)")
    p.add_argument("--hnsw", type=int, default=100_000, help="store-alone items for the HNSW part (0: skip)")
    p.add_argument("--skip-gallery", action="store_true", help="only the store-alone part")
    p.add_argument("--store", default=None, metavar="URI",
                   help="a scratch PostgreSQL database (postgresql://...; its gallery is REPLACED) instead of a "
                        "temporary embedded one")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="run the job's actors on this Ray cluster")
    p.add_argument("--ann", nargs="?", const="both", choices=("old", "both"), default=None,
                   help="gallery part: build HNSW indexes after the first half (old: the pending old vectors only, "
                        "the new side stays exact; both, the default: old and new) and serve with --ann")
    p.add_argument("--m", type=int, default=16, help="HNSW links per node for --ann (default 16)")
    p.add_argument("--ef-construction", type=int, default=64, help="HNSW build candidate list for --ann (default 64)")
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    rows = []
    if not args.skip_gallery:
        import httpx

        from backfill.live.store import open_store
        from backfill.suite import ModelSuite

        suite = ModelSuite.load(SUITE)
        store_dir = args.store or str(Path(tempfile.mkdtemp(prefix="live_bench")) / "store")
        store = open_store(store_dir, create=True)
        print("loading Fashion-MNIST train+test...", file=sys.stderr)
        pngs = load_fashion_mnist(store, suite)
        n = len(pngs)
        # This machine's speed moves by 10-25% from one minute to the next (the model alone measured twice in a
        # row), so the first half is backfilled in short job runs: each round runs the model alone, then the job
        # once per variant (their order rotating from round to round), and each run is compared with the mean of
        # the model alone before and after its round.
        variants = {v: v.split() for v in args.variants}
        # The service runs from the start, as in a deployment; the first half has no searches (the service
        # idle), so a job that yields to searches runs as it would alone. ``--ann`` searches use the HNSW
        # indexes once they are built after the first half.
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "backfill.cli", "serve", "--store", str(store_dir),
                                   "--suite", str(SUITE), "--port", str(port)] + (["--ann"] if args.ann else []),
                                  stderr=subprocess.DEVNULL)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        for _ in range(600):
            try:
                if client.get("/status").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        time.sleep(2)  # the service's start-up requests are past
        alone, jobs = [], {v: [] for v in variants}
        share = n // 2 // (args.rounds * len(variants))
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: model alone, job variants...", file=sys.stderr)
            alone.append(model_alone(pngs[r * share:(r + 1) * share], workers=args.workers,
                                     batch_size=args.batch_size, threads=args.threads))
            for v in _rotated(list(variants), r):
                jobs[v].append(run_job(store_dir, limit=share, workers=args.workers, batch_size=args.batch_size,
                                       threads=args.threads, store=store, ray_address=args.ray_address,
                                       options=variants[v]))
        alone.append(model_alone(pngs[:share], workers=args.workers, batch_size=args.batch_size,
                                 threads=args.threads))
        def shares_of(i: int) -> dict[str, list[float]]:  # i: 0 the model alone, 1 its embedding alone
            return {v: [j["steady"] / ((a[i] + b[i]) / 2) for j, a, b in zip(runs, alone, alone[1:], strict=False)]
                    for v, runs in jobs.items()}

        shares, model_shares = shares_of(0), shares_of(1)
        base, base_model = (float(np.mean([a[i] for a in alone])) for i in (0, 1))
        hnsw_s = None
        if args.ann:
            t = time.perf_counter()
            store.build_hnsw(m=args.m, ef_construction=args.ef_construction,
                             sides=("old",) if args.ann == "old" else ("old", "new"))
            hnsw_s = time.perf_counter() - t
        png = pngs[-1]
        count = iter(range(args.searches + 20))
        idle = {key: v[20:] for key, v in _search_loop(client, png, stop=lambda: next(count, None) is None).items()}
        # The second half with searches, in --during-rounds rounds of one job run per variant (rotating), so
        # that every variant meets a pending side of every size; each variant's searches are pooled.
        order = [v for r in range(args.during_rounds) for v in _rotated(list(variants), r)]
        during = {v: {"http": [], "sql": [], "embed": [], "steady": []} for v in variants}
        segment = (n - n // 2) // len(order)
        for i, v in enumerate(order):
            print(f"job with searches, run {i + 1}/{len(order)} ({v or 'defaults'})...", file=sys.stderr)
            run = run_job(store_dir, limit=None if i == len(order) - 1 else segment, workers=args.workers,
                          batch_size=args.batch_size, threads=args.threads, store=store,
                          ray_address=args.ray_address, options=variants[v],
                          during=lambda stop: _search_loop(client, png, stop=stop, interval=0.02))
            for key in ("http", "sql", "embed"):
                during[v][key] += run["during"][key]
            during[v]["steady"].append(run["steady"])
        client.close()
        server.terminate()
        server.wait(30)
        recall = _ann_recall(store, _gallery_pairs(store, queries=100)) if args.ann else None
        wall = float(np.mean([j["wall"] for j in jobs[args.variants[0]]]))
        search = {None: "exact", "old": "HNSW on the pending old side, new side exact",
                  "both": "HNSW, iterative scan"}[args.ann]
        rows += [
            ("gallery items", f"{n:,}", f"HNSW (m {args.m}, ef_construction {args.ef_construction}) built in "
                                        f"{hnsw_s:.0f} s after the first half" if args.ann else ""),
            (f"new model alone ({args.workers} proc x {args.threads} thread, batch {args.batch_size}), items/s",
             f"{base:,.0f}", f"decoding + embedding; mean of {len(alone)} runs of {share:,} images: "
                             + ", ".join(f"{a[0]:,.0f}" for a in alone)),
            ("its embedding alone (images decoded beforehand), items/s", f"{base_model:,.0f}",
             "the same runs: " + ", ".join(f"{a[1]:,.0f}" for a in alone)),
            *[(f"job steady items/s, {v or 'defaults'}", f"{np.mean([j['steady'] for j in runs]):,.0f}",
               f"median {100 * float(np.median(shares[v])):.0f}% of the model alone, "
               f"{100 * float(np.median(model_shares[v])):.0f}% of its embedding alone ({len(runs)} runs of "
               f"{share:,} items, each against the mean of the model alone before and after its round: "
               + ", ".join(f"{100 * x:.0f}%" for x in shares[v]) + ")")
              for v, runs in jobs.items()],
            ("job wall time incl. Ray start-up, per run", f"{wall:.1f} s",
             f"{share / wall:,.0f} items/s end to end ({args.variants[0] or 'defaults'})"),
            (f"search p50 / p99 idle (HTTP, full, k=10, {search})", "{:.1f} / {:.1f} ms".format(*_pct(idle["http"])),
             "{} searches; of which SQL {:.1f} / {:.1f}, query embedding {:.1f} / {:.1f}".format(
                 len(idle["http"]), *_pct(idle["sql"]), *_pct(idle["embed"]))),
            *([("recall@10 of the HNSW search at the end (new side), against exact", f"{recall:.3f}",
                "100 gallery items' new vectors as queries")] if recall is not None else []),
            *[(f"search p50 / p99 during the job, {v or 'defaults'}", "{:.1f} / {:.1f} ms".format(*_pct(d["http"])),
               "{} searches; SQL {:.1f} / {:.1f}, embedding {:.1f} / {:.1f}; job meanwhile {:,.0f} items/s".format(
                   len(d["http"]), *_pct(d["sql"]), *_pct(d["embed"]), np.mean(d["steady"])))
              for v, d in during.items()],
        ]
        store.close()
        if store.server is not None:
            store.server.cleanup()
    for n_syn, hnsw in ((args.synthetic, False), (args.hnsw, True)):
        if not n_syn:
            continue
        print(f"store alone, {n_syn:,} synthetic items{' + HNSW' if hnsw else ''}...", file=sys.stderr)
        s = synthetic(n_syn, hnsw=hnsw, store_uri=args.store)
        rows += [(f"store alone {n_syn:,}: COPY load, new-vector writes/s (no vector index)",
                  f"{s['load_s']:.0f} s, {s['write_rate']:,.0f}/s", ""),
                 (f"store alone {n_syn:,}: exact search p50 / p99 (both sides, half backfilled)",
                  "{:.0f} / {:.0f} ms".format(*s["exact"]), "")]
        if hnsw:
            rows += [(f"store alone {n_syn:,}: HNSW build, search p50 / p99, recall@10 vs exact",
                      f"{s['hnsw_build_s']:.0f} s, " + "{:.1f} / {:.1f} ms".format(*s["hnsw"]) +
                      f", {s['recall']:.3f}", "iterative scan, ef_search 100"),
                     (f"store alone {n_syn:,}: new-vector writes/s with HNSW maintained",
                      f"{s['write_rate_hnsw']:,.0f}/s", "")]
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| measure | value | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
