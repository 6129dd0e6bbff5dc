"""The re-embedding job: pending ids from the store -> Ray Data actors (the new model) -> conditional writes.

The store is the checkpoint: pending = not backfilled, each batch is written in one statement that sets the
vector and the flag only where the item is still pending. After ``kill -9`` at any moment, rerunning the same
command finishes the job; committed batches stay, the rest is pending again, and actors left running by a
killed driver can only write what the new model computes, once (their late writes are no-ops). The driver
holds the store's writer lock for its whole run, so a second job on the same store stops at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from backfill.live.store import ORDERS, StoreError, open_store

if TYPE_CHECKING:
    import torch

__all__ = ["JobResult", "EmbedAndWrite", "run_job"]


@dataclass(frozen=True)
class JobResult:
    """What one run did: items it handed to the actors, rows it wrote, and the store's state after it."""

    scheduled: int
    written: int
    backfilled: int
    total: int


class EmbedAndWrite:
    """Ray Data callable class (one per actor): holds the suite's new model and two store connections.

    ``__call__`` takes a block of ids and handles it ``batch_size`` ids at a time: read the still-pending
    ones' images, embed them with the new model, write them conditionally (one transaction per batch). The
    batches are pipelined: while the model embeds batch j, one thread reads batch j + 1's images and decodes
    them into the model's input, and another commits batch j - 1, each on its own store connection, so the
    model waits only for the block's first read and last write. Decoding beside the model is worth a third
    of the model alone's time on Fashion-MNIST (benchmarks/README.md). A call returns only when its writes
    are committed. An unreadable image raises :class:`backfill.images.ImageLoadError` naming the item, after
    the store calls in flight have finished.

    ``yield_to_searches``: with each read, ask the store whether searches are running (one now or in the last
    second, from any client); while they are, run the next batch's read, embedding and write one after
    another. A pipelined actor keeps the model and the store's writes (HNSW insertions, the store's costliest
    work) busy at once, which on a small machine leaves the searches no core: on 2 cores at 70,000 items,
    search p99 during the job was 28, 32, 71, 29 and 26 ms with the actor yielding, 46-99 ms without
    (benchmarks/README.md).
    """

    def __init__(self, uri: str, suite_dir: str, model: str, threads: int | None = None,
                 batch_size: int = 256, yield_to_searches: bool = True) -> None:
        import torch

        from backfill.live.store import PgVectorStore
        from backfill.suite import ModelSuite

        if threads:
            torch.set_num_threads(threads)
        self.suite = ModelSuite.load(suite_dir, device="cuda" if torch.cuda.is_available() else "cpu")
        self.reader, self.writer = PgVectorStore(uri), PgVectorStore(uri)
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="backfill-store")
        self.model = model
        self.batch_size = int(batch_size)
        self.yield_to_searches = bool(yield_to_searches)

    def _read(self, ids: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None, bool]:
        """The ids of the still-pending items among ``ids``, their images decoded into the model's input, and
        whether to yield to searches for this batch. Runs in the reader thread: the decoding then overlaps
        the model's work on the batch before (PIL and torch release the GIL)."""
        from backfill.images import ImageLoadError, load_image, preprocess

        rows = self.reader.pending_images(ids)
        yielding = self.yield_to_searches and self.reader.searches_running()
        images = []
        for item, data in rows:
            try:
                images.append(load_image(data))
            except ImageLoadError as exc:
                raise ImageLoadError(f"gallery item {item}: {exc}") from None
        x = preprocess(images, self.suite.dataset) if images else None
        return np.array([r[0] for r in rows], dtype=np.int64), x, yielding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from backfill.live.gallery import embed_new_input

        ids = np.asarray(batch["data"], dtype=np.int64)  # from_numpy names the column "data"
        batches = [ids[i:i + self.batch_size] for i in range(0, ids.size, self.batch_size)]
        # Already-written items (a replay after a kill) are skipped by the read and by the write's condition.
        reading = self.io.submit(self._read, batches[0]) if batches else None
        writing: Future | None = None
        written = 0
        try:
            for j in range(len(batches)):
                pending, x, yielding = reading.result()
                after = batches[j + 1] if j + 1 < len(batches) else None
                reading = self.io.submit(self._read, after) if after is not None and not yielding else None
                vectors = embed_new_input(self.suite, x) if x is not None else None
                if writing is not None:
                    written += writing.result()
                    writing = None
                if vectors is not None:
                    writing = self.io.submit(self.writer.write_new, pending, vectors, model=self.model)
                if yielding:  # commit this batch, then read the next: the model or the store busy, not both
                    if writing is not None:
                        written += writing.result()
                        writing = None
                    reading = self.io.submit(self._read, after) if after is not None else None
            if writing is not None:
                written += writing.result()
                writing = None
        finally:  # on an error, let the store calls in flight finish before it propagates
            wait([f for f in (reading, writing) if f is not None])
        return {"seen": np.array([len(ids)]), "written": np.array([written])}


def _image_error(exc: BaseException) -> str | None:
    """The message of an ImageLoadError somewhere in a (Ray-wrapped) exception, if any."""
    from backfill.images import ImageLoadError

    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ImageLoadError):
            return str(e).strip().splitlines()[-1]
        stack += [e.__cause__, e.__context__]
    text = str(exc)
    marker = "ImageLoadError: "
    if marker in text:  # Ray sometimes only carries the remote traceback text
        return text.split(marker, 1)[1].strip().splitlines()[0]
    return None


def _init_ray(address: str | None, workers: int) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # Local: keep every Ray address on loopback (live-backfill-notes.md) and start only what the job needs.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="ERROR")
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)


def run_job(store: str, suite_dir: str, *, order: str = "random", batch_size: int = 256, workers: int = 1,
            ray_address: str | None = None, limit: int | None = None, threads: int | None = None,
            batches_per_task: int = 8, yield_to_searches: bool = True, progress: bool = True) -> JobResult:
    """Run (or resume) the backfill of ``store`` with the suite in ``suite_dir``.

    Parameters
    ----------
    store : ``postgresql://`` URI or embedded-store directory.
    order : ``random`` (seeded at load time), ``old_entropy`` (uncertain items first) or ``predicted_gain``
        (largest predicted gain first; the gallery must have been loaded with a suite that has a gain predictor).
    batch_size, workers : items per batch, number of actors (one GPU each when GPUs are present).
    ray_address : a Ray cluster (``ray://host:10001`` or ``auto``); default a local Ray.
    limit : stop after this many more items (demos, tests).
    threads : torch threads per actor (default: torch's choice).
    batches_per_task : batches per Ray task, pipelined by the actor. A task's first read and last write are the
        only store calls not overlapped with the model, so longer tasks hide more of the store; shorter ones
        report progress more often; 1 runs read, embed and write one after another.
    yield_to_searches : while searches of the store run, do each batch's read, embedding and write one after
        another instead of pipelined (see :class:`EmbedAndWrite`); ``False``: always pipelined.
    """
    from tqdm.auto import tqdm

    from backfill.live.gallery import check_suite, model_tag
    from backfill.suite import ModelSuite

    if order not in ORDERS:
        raise StoreError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
    for name, value in (("--batch-size", batch_size), ("--workers", workers),
                        ("--batches-per-task", batches_per_task)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    gallery = open_store(store)
    suite = ModelSuite.load(suite_dir)
    meta = check_suite(gallery, suite)
    status = gallery.status()
    loaded_orders = status["orders"]
    if order not in loaded_orders:
        raise StoreError(f"the gallery was loaded without the {order} order's priorities (its suite had no "
                         f"gain_predictor.pt): use --order {' or '.join(loaded_orders)}, or reload it with "
                         "`backfill gallery load --replace` and a suite that has one")
    tag = model_tag(suite.cards["new"])
    others = [m for m in status["models"] if m != tag]
    if others:
        raise StoreError(f"the store already holds new vectors of {', '.join(others)}, not of this suite's new "
                         f"model {tag}; finish that backfill with its suite or reload the gallery")
    if meta.get("new_model") and meta["new_model"] != tag:
        print(f"note: the gallery was loaded with new model {meta['new_model']}; backfilling with {tag}",
              file=sys.stderr)
    with gallery.writer_lock():
        pending = gallery.pending_ids(order=order, limit=limit)
        written = 0
        if pending.size:
            bar = partial(tqdm, total=int(pending.size), desc="backfill", unit="item", unit_scale=True,
                          disable=not progress, smoothing=0.1)
            written = _run_ray(gallery.uri, str(suite_dir), tag, pending, batch_size=batch_size,
                               workers=workers, ray_address=ray_address, threads=threads,
                               batches_per_task=batches_per_task, yield_to_searches=yield_to_searches, bar=bar)
        status = gallery.status()
    gallery.close()
    return JobResult(int(pending.size), written, status["backfilled"], status["total"])


def _run_ray(uri: str, suite_dir: str, tag: str, pending: np.ndarray, *, batch_size: int, workers: int,
             ray_address: str | None, threads: int | None, batches_per_task: int, yield_to_searches: bool,
             bar: Callable[[], Any]) -> int:
    import ray
    import ray.data

    _init_ray(ray_address, workers)
    # One block per Ray task: up to batches_per_task batches (the actor pipelines them), fewer when that would
    # leave an actor without work; progress is reported block by block.
    n_batches = -(-pending.size // batch_size)
    block = batch_size * max(1, min(batches_per_task, -(-n_batches // workers)))
    blocks = [pending[i:i + block] for i in range(0, pending.size, block)]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    # from_numpy of a list: one block per entry, column "data" (the ids).
    ds = ray.data.from_numpy(blocks).map_batches(
        EmbedAndWrite, fn_constructor_args=(uri, suite_dir, tag, threads, batch_size, yield_to_searches),
        batch_size=block,
        compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus, num_cpus=0 if gpus else 1,
        batch_format="numpy")
    written = 0
    try:
        with bar() as bar:  # made after Ray is up, so items/s and ETA measure the work
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(int(out["seen"].sum()))
                written += int(out["written"].sum())
    except Exception as exc:
        message = _image_error(exc)
        if message is not None:
            from backfill.images import ImageLoadError

            raise ImageLoadError(message) from None
        raise
    finally:
        if not ray_address:
            ray.shutdown()
    return written

