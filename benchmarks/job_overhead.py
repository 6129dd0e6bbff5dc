"""Where the backfill job's time goes: the model alone, the job's actor in this process (with its store calls
replaced by sleeps of their length, and with the real store), and the job through Ray (the CLI), same run.

    python benchmarks/job_overhead.py [--rounds 5] [--chunk 6144] [--job-variants '' '--batches-per-task 32']

A temporary embedded store holds Fashion-MNIST train + test (70,000 items, as in ``live_backfill.py``). Each
round runs every variant once, in rotating order, on ``--chunk`` pending items, one torch thread, batch 256:

- model alone: the PNG bytes of one fixed chunk (in memory) decoded and embedded, no store; and within it, the
  embedding alone (decoded images in: the model's share, which the actor's pipeline cannot beat, since it
  decodes in its reader thread beside the model);
- actor, store as sleeps: :class:`backfill.live.job.EmbedAndWrite` called in this process on that chunk, its
  reads and writes replaced by sleeps as long as the real ones (measured first); the pipelining's own cost;
- actor, real store: another such actor on a fresh chunk each round, reading and writing the store (its items are then
  backfilled);
- job through Ray: ``backfill gallery backfill --limit CHUNK`` (one actor; once per ``--job-variants`` entry,
  extra job options), its steady items/s from the first to the last write seen in the store, as
  ``live_backfill.py`` measures it.

Prints items/s per round, the medians and their share of the model alone's median (and of its embedding
alone). No searches run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
import live_backfill  # noqa: E402

from backfill.images import load_image  # noqa: E402
from backfill.live.gallery import embed_new, model_tag  # noqa: E402
from backfill.live.job import EmbedAndWrite  # noqa: E402
from backfill.live.store import open_store  # noqa: E402
from backfill.suite import ModelSuite  # noqa: E402

BATCH = 256
EMBEDDING = "model alone: its embedding alone"


def seconds(call: Callable[[], object]) -> float:
    """Wall time of one ``call()``."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class SleepingStore:
    """Stands in for the actor's reader and writer: each call sleeps as long as the real one took (the GIL is
    free meanwhile, as in a real call's wait on the server) and answers from rows read beforehand."""

    def __init__(self, rows: dict[int, bytes], read_s: float, write_s: float) -> None:
        self.rows, self.read_s, self.write_s = rows, read_s, write_s

    def pending_images(self, ids: np.ndarray) -> list[tuple[int, bytes]]:
        time.sleep(self.read_s)
        return [(int(i), self.rows[int(i)]) for i in ids]

    def searches_running(self) -> bool:
        return False

    def write_new(self, ids: np.ndarray, vectors: np.ndarray, *, model: str) -> int:
        time.sleep(self.write_s)
        return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=6144, help="items per variant and round")
    parser.add_argument("--job-variants", nargs="+", default=[""], metavar="OPTIONS",
                        help="options of the job through Ray, one string per variant (default: its defaults)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = ModelSuite.load(live_backfill.SUITE)
    tag = model_tag(suite.cards["new"])
    store_dir = str(Path(tempfile.mkdtemp(prefix="job_overhead")) / "store")
    store = open_store(store_dir, create=True)
    print("loading Fashion-MNIST train+test...", file=sys.stderr)
    pngs = live_backfill.load_fashion_mnist(store, suite, progress=False)
    # The CLI job takes pending items from the front of the random order, so everything else comes from its
    # end: four probe batches, the items the variants that write nothing reuse, the in-process actor's chunks.
    ids = store.pending_ids(order="random")[::-1]
    if ids.size < 4 * BATCH + (1 + (1 + len(args.job_variants)) * args.rounds) * args.chunk:
        parser.error(f"{args.rounds} rounds of {args.chunk:,} items need more than the {ids.size:,} items")
    probe, reused = ids[:4 * BATCH], ids[4 * BATCH:4 * BATCH + args.chunk]
    actor_chunks = iter(np.split(ids[4 * BATCH + args.chunk:][:args.rounds * args.chunk], args.rounds))
    # The real calls' lengths, for the sleeps: reads of items that stay pending, writes of four probe batches.
    read_s = statistics.median(seconds(lambda: store.pending_images(reused[:BATCH])) for _ in range(5))
    vectors = embed_new(suite, [load_image(pngs[i]) for i in probe[:BATCH]])
    write_s = statistics.median(seconds(lambda b=b: store.write_new(b, vectors, model=tag))
                                for b in np.split(probe, 4))
    real, sleeping = (EmbedAndWrite(store.uri, str(live_backfill.SUITE), tag, threads=1, batch_size=BATCH,
                                    yield_to_searches=False) for _ in range(2))
    sleeping.reader = sleeping.writer = SleepingStore(dict(enumerate(pngs)), read_s, write_s)

    def model_alone(ids: np.ndarray) -> float:
        total, embedding = live_backfill.embed_pngs(suite, [pngs[i] for i in ids], BATCH)
        rates[EMBEDDING].append(len(ids) / embedding)
        return len(ids) / total

    def actor(worker: EmbedAndWrite, ids: np.ndarray) -> float:
        start = time.perf_counter()
        worker({"data": ids})
        return len(ids) / (time.perf_counter() - start)

    def through_ray(options: str) -> float:  # the next chunk of the store's own order
        return live_backfill.run_job(store_dir, limit=args.chunk, workers=1, batch_size=BATCH, threads=1,
                                     store=store, options=options.split())["steady"]

    variants = {"model alone": lambda: model_alone(reused),
                "actor, store as sleeps": lambda: actor(sleeping, reused),
                "actor, real store": lambda: actor(real, next(actor_chunks)),
                **{f"job through Ray{f' ({v})' if v else ''}": lambda v=v: through_ray(v) for v in args.job_variants}}
    # The embedding alone is timed within each model-alone run.
    rates: dict[str, list[float]] = {"model alone": [], EMBEDDING: [], **{name: [] for name in variants}}
    names = list(variants)
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(variants[name]())
    store.close()
    if store.server is not None:
        store.server.cleanup()
    alone, embedding = (statistics.median(rates[name]) for name in ("model alone", EMBEDDING))
    print(f"\n{len(pngs):,}-item store; {args.chunk:,} items per variant and round, batch {BATCH}, 1 torch thread; "
          f"real store calls per batch: read {1e3 * read_s:.1f} ms, write {1e3 * write_s:.1f} ms\n")
    print("| variant | items/s per round | median | share of the model alone | of its embedding alone |\n"
          "|---|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | {median:,.0f} | {100 * median / alone:.0f}% "
              f"| {100 * median / embedding:.0f}% |")


if __name__ == "__main__":
    main()
