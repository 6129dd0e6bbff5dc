"""backfill: online backfilling for image retrieval (Seo et al., 2023), reference implementation.

The engine (embeddings, strategies, backfill orders, metrics, curve evaluation, top-k search) is importable
from here and needs only numpy (and faiss for :class:`BackfillIndex`, loaded on first use). Training,
model suites and the explorer live in their own modules and need the ``train`` / ``app`` dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from backfill.embeddings import ARRAY_NAMES, Embeddings, l2_normalize
from backfill.evaluation import Curve, curve_points, evaluate_curve
from backfill.metrics import (
    area_under_curve,
    average_precision,
    cmc,
    mean_average_precision,
    negative_flip_rate,
    relative_gain,
)
from backfill.ordering import (
    class_centroids,
    classifier_entropy_priority,
    nearest_centroid_priority,
    num_backfilled,
    oracle_priority,
    order_by_score,
    random_order,
    validate_order,
)
from backfill.report import evaluate_strategies, summarize_curve
from backfill.strategies import ALIASES, NEW_REFERENCE, STRATEGIES, Space, Strategy, get_strategy, resolve_strategy

if TYPE_CHECKING:
    from backfill.indexing import BackfillIndex, SearchResult

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "ARRAY_NAMES",
    "NEW_REFERENCE",
    "STRATEGIES",
    "BackfillIndex",
    "Curve",
    "Embeddings",
    "SearchResult",
    "Space",
    "Strategy",
    "__version__",
    "area_under_curve",
    "average_precision",
    "class_centroids",
    "classifier_entropy_priority",
    "cmc",
    "curve_points",
    "evaluate_curve",
    "evaluate_strategies",
    "get_strategy",
    "l2_normalize",
    "mean_average_precision",
    "nearest_centroid_priority",
    "negative_flip_rate",
    "num_backfilled",
    "oracle_priority",
    "order_by_score",
    "random_order",
    "relative_gain",
    "resolve_strategy",
    "summarize_curve",
    "validate_order",
]

# Names whose module imports faiss: loaded on first access (PEP 562), so that `import backfill` and the
# curve evaluation stay numpy-only.
_LAZY = {"BackfillIndex": "backfill.indexing", "SearchResult": "backfill.indexing"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'backfill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
