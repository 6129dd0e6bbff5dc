"""The HTTP search service (FastAPI): ``GET /status``, ``POST /search``; OpenAPI docs at ``/docs``.

A query image goes through the one upload preprocessing path; the methods need these query vectors:
``full`` the new model's embedding and psi_mc of it (one new-model pass), ``rank_merge`` the old and new
models' embeddings, ``old`` the old model's, ``new_partial`` the new model's. The store merges both sides
in one SQL statement, i.e. one snapshot, and returns the progress count of that same snapshot.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile  # module level: FastAPI resolves annotations

from backfill.live.store import METHODS, StoreError, open_store

__all__ = ["create_app", "query_vectors", "MAX_UPLOAD_BYTES"]

MAX_UPLOAD_BYTES = 10 * 2**20


@torch.inference_mode()
def query_vectors(suite: Any, image: Any, method: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(q_new, q_old)`` of one image for ``method`` (``None`` where the method does not use that side).

    The same calls as :meth:`backfill.suite.ModelSuite.embed_arrays` (``new``, ``old``, ``transformed_mc``).
    """
    from backfill.images import preprocess

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "full" and suite.psi_mc is None:
        raise ValueError("method 'full' needs psi_mc.pt in the suite")
    x = preprocess([image], suite.dataset).to(suite.device)
    q_new = q_old = None
    if method != "old":
        new = suite.new.embed(x)
        q_new = new[0].float().cpu().numpy()
        if method == "full":
            q_old = suite.psi_mc(new)[0].float().cpu().numpy()
    if method in ("old", "rank_merge"):
        q_old = suite.old.embed(x)[0].float().cpu().numpy()
    return q_new, q_old


def create_app(store: str | os.PathLike, suite_dir: str | os.PathLike, *, ann: bool = False,
               pool_size: int = 4, threads: int | None = 1, release_server: bool = False) -> Any:
    """The FastAPI app serving ``store`` with the suite in ``suite_dir``.

    ``release_server``: at shutdown, also give back this process's handle on an embedded server (``backfill
    serve``): uvicorn ends a SIGTERM by re-raising the signal, which skips the exit hook that would, and the
    server then outlived every process using it. Not in a process that goes on using the store (tests).

    ``threads``: torch threads of this process (``None``: torch's default). One query image gains nothing
    from intra-op threads, and on a busy machine their synchronisation dominated the query's forward pass
    (p50 200 ms with 2 threads, 6 ms with 1, benchmarks/live_backfill.py's machine).
    Raises :class:`StoreError` (unreachable store, no gallery, a suite that does not fit) before serving.
    """
    from backfill.images import ImageLoadError, load_image
    from backfill.live.gallery import check_suite
    from backfill.suite import ModelSuite

    if threads:
        torch.set_num_threads(threads)
    suite = ModelSuite.load(suite_dir)
    gallery = open_store(store)
    gallery.ann = ann
    check_suite(gallery, suite)
    gallery.open_pool(size=pool_size)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        gallery.close()
        if release_server and gallery.server is not None:
            gallery.server.cleanup()  # stops the server when no other process holds it

    app = FastAPI(title="backfill live search", lifespan=lifespan,
                  description="Online-backfilling search over a gallery that is being re-embedded.")
    app.state.store, app.state.suite = gallery, suite

    @app.get("/status")
    def status() -> dict[str, Any]:
        """Gallery size, backfilled count and ratio, whether a job is running."""
        return gallery.status()

    @app.post("/search")
    def search(image: UploadFile = File(..., description="query image (PNG, JPEG, WebP, BMP, GIF...)"),  # noqa: B008
               k: int = Query(10, ge=1, le=1000),
               method: str = Query("full", pattern="^(" + "|".join(METHODS) + ")$")) -> dict[str, Any]:
        """Top-k gallery items for the query image under ``method``, each with its score and scoring space."""
        t0 = time.perf_counter()
        data = image.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{image.filename}: larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        try:
            pil = load_image(data)
            q_new, q_old = query_vectors(suite, pil, method)
        except ImageLoadError as exc:
            raise HTTPException(400, f"{image.filename or 'image'}: {exc}") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        t1 = time.perf_counter()
        try:
            result = gallery.search(method=method, k=k, q_new=q_new, q_old=q_old)
        except StoreError as exc:
            raise HTTPException(503, str(exc)) from None
        t2 = time.perf_counter()
        return {"results": [{"id": h.id, "label": h.label, "score": h.score, "space": h.space}
                            for h in result.hits],
                "backfilled": result.backfilled, "total": result.total, "method": method,
                "timing_ms": {"embed": 1e3 * (t1 - t0), "search": 1e3 * (t2 - t1)}}

    return app
