"""What the Streamlit page ``pages/live.py`` needs to watch a live store: cached store and suite handles,
the status, a search against the store, and one-line error messages (unreachable store, no gallery, a
suite that does not fit).

Nothing here draws widgets; the page lays them out. Handles are cached per location
(``st.cache_resource``): opening a directory starts (or attaches to) its embedded PostgreSQL, seconds, and a
suite loads its models once.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from backfill.live.store import METHODS, Hit, PgVectorStore, StoreError, open_store

__all__ = ["STORE_ENV", "SUITE_ENV", "METHODS", "default_store", "default_suite", "open_watched", "load_suite",
           "status", "sample", "check", "search", "thumbnails", "LiveResult"]

#: Environment variables with the page's default store location and suite directory.
STORE_ENV = "BACKFILL_LIVE_STORE"
SUITE_ENV = "BACKFILL_LIVE_SUITE"


def default_store() -> str:
    """The store location the page starts with (``$BACKFILL_LIVE_STORE``, else empty)."""
    return os.environ.get(STORE_ENV, "")


def default_suite(meta: dict[str, Any]) -> str:
    """The suite directory the page starts with: ``$BACKFILL_LIVE_SUITE``, else the one the gallery was
    loaded with (``meta["suite"]``)."""
    return os.environ.get(SUITE_ENV) or str(meta.get("suite") or "")


@st.cache_resource(show_spinner="Opening the store...", max_entries=4)
def open_watched(location: str) -> PgVectorStore:
    """The store at ``location`` (a directory or a ``postgresql://`` URI), with a small connection pool (the
    page's runs and its refresh loop may read from several threads). :class:`StoreError` is not cached."""
    location = location.strip()
    store = open_store(location)
    store.meta()  # fail here, in one line, when the server holds no gallery
    store.open_pool(size=2)
    return store


@st.cache_resource(show_spinner="Loading the models...", max_entries=2)
def load_suite(directory: str) -> Any:
    """The model suite in ``directory`` (:class:`StoreError` when there is none)."""
    from backfill.suite import ModelSuite

    try:
        return ModelSuite.load(directory)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot load the suite {directory}: {str(exc).strip().splitlines()[0]}") from None


def status(store: PgVectorStore) -> dict[str, Any]:
    """The store's status (not cached: the page refreshes it while a job runs)."""
    return store.status()


def sample(store: PgVectorStore, item: int) -> bytes:
    """The encoded image of gallery item ``item``; :class:`StoreError` when there is no such item."""
    data = store.images([item]).get(int(item))
    if data is None:
        raise StoreError(f"the gallery has no item {item}")
    return data


def check(store: PgVectorStore, suite: Any) -> dict[str, Any]:
    """The store's metadata when ``suite`` fits its gallery; :class:`StoreError` otherwise."""
    from backfill.live.gallery import check_suite

    return check_suite(store, suite)


@dataclass(frozen=True)
class LiveResult:
    """One search against the live store: the hits (best first) and the progress of the same snapshot."""

    hits: list[Hit]
    backfilled: int
    total: int


def search(store: PgVectorStore, suite: Any, image: bytes, *, method: str, k: int) -> LiveResult:
    """Search the store with one query image (encoded bytes) by ``method``, like ``POST /search`` does.

    Raises :class:`backfill.images.ImageLoadError` for an unreadable image, :class:`StoreError` for a store
    problem or a method the suite cannot serve.
    """
    from backfill.images import load_image
    from backfill.live.service import query_vectors

    if method not in METHODS:
        raise StoreError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        q_new, q_old = query_vectors(suite, load_image(image), method)
    except ValueError as exc:
        if type(exc) is not ValueError:  # ImageLoadError and friends: the caller words them
            raise
        raise StoreError(str(exc)) from None
    result = store.search(method=method, k=k, q_new=q_new, q_old=q_old)
    return LiveResult(result.hits, result.backfilled, result.total)


def thumbnails(store: PgVectorStore, ids: list[int], *, size: int = 96) -> dict[int, np.ndarray]:
    """The gallery images of ``ids`` as RGB or grey uint8 arrays, upscaled (nearest) to about ``size`` px."""
    from PIL import Image

    out = {}
    for item, data in store.images(ids).items():
        with Image.open(io.BytesIO(data)) as im:
            scale = max(1, size // max(im.size))
            out[item] = np.asarray(im.resize((im.width * scale, im.height * scale), Image.NEAREST))
    return out
