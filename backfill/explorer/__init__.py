"""The computing side of the Streamlit explorer (``app.py``): plain Python, no streamlit import.

* :mod:`~backfill.explorer.session`: :class:`Explorer`, one model suite and its gallery: embeddings,
  orders, indexes, curves (computed ahead in the background, cached in memory and on disk), summaries.
* :mod:`~backfill.explorer.queries`: :class:`Query`, uploads and per-query :func:`search`.
* :mod:`~backfill.explorer.teaching`: the pictures of "How it works" as typed data.
* :mod:`~backfill.explorer.display`: thumbnails, colours, the gallery blurb, CSV export.
* :mod:`~backfill.explorer.cache`: the disk cache, the memo and the background worker.

The prose of the app lives beside them as markdown (``how_it_works.md``, ``orders.md``, ``pictures.md``, ``tour.md``).
"""

from __future__ import annotations

from pathlib import Path

from backfill.explorer.cache import ArrayCache, Memo, Worker, digest
from backfill.explorer.display import (
    CORRECT_COLORS,
    DATASET_NAMES,
    gallery_blurb,
    hit_thumbnail,
    method_card,
    method_diagram,
    results_csv,
    sections,
    thumbnail,
)
from backfill.explorer.queries import (
    MAX_UPLOAD_MB,
    UPLOAD_TYPES,
    Hit,
    MethodResult,
    Query,
    UploadError,
    gallery_query,
    model_view,
    read_upload,
    search,
    upload_queries,
)
from backfill.explorer.session import (
    APP_ORDERS,
    DEFAULT_CACHE_DIR,
    DEFAULT_METHODS,
    METRICS,
    OPTIONAL_METHODS,
    REFERENCE_METHODS,
    CurveData,
    Explorer,
    SummaryRow,
    available_orders,
    available_settings,
    default_models_dir,
    download_cifar100,
    prepare,
    wait_until,
)
from backfill.explorer.teaching import Projection, ScorePanel, cross_space_order, projection, score_distributions

PROSE_DIR = Path(__file__).resolve().parent


def prose(name: str) -> str:
    """The markdown file ``name`` (without ``.md``) that ships with the explorer."""
    return (PROSE_DIR / f"{name}.md").read_text(encoding="utf-8")


__all__ = [
    "APP_ORDERS", "CORRECT_COLORS", "DATASET_NAMES", "DEFAULT_CACHE_DIR", "DEFAULT_METHODS", "MAX_UPLOAD_MB",
    "METRICS", "OPTIONAL_METHODS", "REFERENCE_METHODS", "UPLOAD_TYPES", "ArrayCache", "CurveData", "Explorer",
    "Hit", "Memo", "MethodResult", "Projection", "Query", "ScorePanel", "SummaryRow", "UploadError", "Worker",
    "available_orders", "available_settings", "cross_space_order", "default_models_dir", "digest", "download_cifar100",
    "gallery_blurb", "gallery_query", "hit_thumbnail", "method_card", "method_diagram", "model_view", "projection",
    "prose", "read_upload", "results_csv", "score_distributions", "sections", "search", "thumbnail",
    "upload_queries", "prepare", "wait_until",
]
