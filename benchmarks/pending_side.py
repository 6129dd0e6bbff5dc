"""Late in a job: HNSW against exact search of the pending side, by how many of its rows are still live.

The pending old vectors' HNSW index is built once; as the job moves rows out of the pending partition, the index
keeps listing them, so an iterative scan visits about k x (entries / live rows) of them to find k live ones,
while an exact scan reads the partition once. This script measures where the two cross (behind
``PgVectorStore.ann_min_rows``) and what parallel workers do to the exact side (``parallel_min_rows``), on
an embedded store, nothing else running:

    python benchmarks/pending_side.py [--items 70000]

Half the items are backfilled, HNSW indexes (m 8, ef_construction 32) built on both sides, then the rest is
backfilled step by step; at each step: ``full`` search (k=10) p50 / p99 with the pending side by index, and
scanned exactly with 2 parallel workers and with none (the new side by index throughout). Vectors: 10 Gaussian
clusters in 128-d, unit-normalised (a graph index's easy case is the real one; random vectors are its worst).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from backfill.live.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=70_000)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 128)).astype(np.float32)

    def vectors(labels: np.ndarray) -> np.ndarray:
        v = centres[labels] + 0.8 * rng.standard_normal((labels.size, 128)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    n, half = args.items, args.items // 2
    labels = rng.integers(0, 10, n)
    store = open_store(Path(tempfile.mkdtemp(prefix="pending_side")) / "store", create=True)
    store.create(d_old=128, d_new=128, meta={"dataset": "synthetic"}, replace=True)
    store.add_items(ids=np.arange(n), labels=labels, refs=[""] * n, images=[b""] * n, old=vectors(labels),
                    priority=np.zeros(n), random_rank=np.arange(n))
    store.write_new(np.arange(half), vectors(labels[:half]), model="synthetic")
    for table in ("gallery", "vec_old_pending", "vec_old_done", "vec_new"):
        store.conn.execute(f"VACUUM ANALYZE backfill.{table}")
    store.build_hnsw(m=8, ef_construction=32)
    queries = [(vectors(np.array([i % 10]))[0], vectors(np.array([i % 10]))[0]) for i in range(args.queries)]

    def latency(pending_by_index: bool, workers: int) -> str:
        # The new side (>= half) always goes by index; the pending side (< half) by index only when asked.
        store.ann, store.parallel_workers = True, workers
        store.ann_min_rows, store.parallel_min_rows = (0 if pending_by_index else half), 0
        times = []
        for q_new, q_old in queries:
            t = time.perf_counter()
            store.search(method="full", k=10, q_new=q_new, q_old=q_old)
            times.append(time.perf_counter() - t)
        p50, p99 = np.percentile(np.array(times[5:]) * 1e3, [50, 99])
        return f"{p50:.1f} / {p99:.1f}"

    rest = rng.permutation(np.arange(half, n))
    written = 0
    print(f"{n:,} items, pending partition of {half:,} indexed; full search, k=10, ms p50 / p99\n")
    print("| pending rows still live | HNSW | exact, 2 parallel workers | exact, serial |\n|---|---|---|---|")
    for fraction in (0.6, 0.3, 0.1, 0.05, 0.03, 0.01, 0.003, 0.0005, 0.0):
        live = int(round(fraction * half))
        for start in range(written, half - live, 2000):
            ids = rest[start:min(start + 2000, half - live)]
            store.write_new(ids, vectors(labels[ids]), model="synthetic")
        written = half - live
        print(f"| {live:,} ({100 * fraction:g}%) | {latency(True, 2)} | {latency(False, 2)} | {latency(False, 0)} |",
              flush=True)
    store.close()
    if store.server is not None:
        store.server.cleanup()


if __name__ == "__main__":
    main()
