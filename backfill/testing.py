"""Slow, straightforward reference implementations, intended for use in tests and benchmarks.

They rebuild the full merged score matrix and use scikit-learn's ``average_precision_score``, as published
evaluation code does, so that the fast engine (:mod:`backfill.evaluation`, :mod:`backfill.indexing`) can be
checked against an independent computation. scikit-learn comes with the ``test`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backfill.embeddings import Embeddings
from backfill.evaluation import Curve
from backfill.ordering import num_backfilled, resolve_exclude, validate_order
from backfill.strategies import Strategy, get_strategy

__all__ = ["merged_scores", "reference_curve"]


def merged_scores(
    strategy: str | Strategy,
    queries: Embeddings,
    gallery: Embeddings,
    order: np.ndarray,
    ratio: float,
    *,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force merged score matrix of ``strategy`` at one backfill ratio.

    Parameters
    ----------
    strategy : str or Strategy
        The strategy (see :func:`backfill.strategies.get_strategy`).
    queries, gallery : Embeddings
        Query and gallery embeddings.
    order : array-like of shape (n_gallery,)
        Backfill order.
    ratio : float
        Backfill ratio in [0, 1].
    exclude : array-like of shape (n_queries,), optional
        Gallery id to drop per query (``-1`` = none).

    Returns
    -------
    scores : ndarray of shape (n_queries, n_gallery), float32
        ``scores[i, g]`` is the strategy's raw score of gallery id ``g`` for query ``i``; ``-inf`` where
        ``g`` is unreachable or excluded.
    spaces : ndarray of shape (n_gallery,), uint8
        The :class:`~backfill.strategies.Space` that scored each gallery id.
    """
    strat = get_strategy(strategy)
    order = validate_order(order, gallery.n)
    m = num_backfilled(ratio, gallery.n)
    in_b = np.zeros(gallery.n, dtype=bool)
    in_b[order[:m]] = True
    ex = resolve_exclude(queries.n, gallery.n, exclude=exclude)
    scores = np.full((queries.n, gallery.n), -np.inf, dtype=np.float32)
    spaces = np.zeros(gallery.n, dtype=np.uint8)
    for side, part in zip(strat.sides(float(ratio)), (~in_b, in_b), strict=True):
        if side is None or not part.any():
            continue
        q, g = side.arrays(queries, gallery)
        scores[:, part] = q @ g[part].T
        spaces[part] = side.space
    rows = np.nonzero(ex >= 0)[0]
    scores[rows, ex[rows]] = -np.inf
    return scores, spaces


def reference_curve(
    strategy: str | Strategy,
    queries: Embeddings,
    gallery: Embeddings,
    order: np.ndarray,
    *,
    points: Sequence[float] | np.ndarray,
    leave_one_out: bool = False,
    exclude: np.ndarray | None = None,
) -> Curve:
    """The straightforward evaluator, to check :func:`backfill.evaluation.evaluate_curve`.

    At every point it rebuilds the merged score matrix and calls scikit-learn's
    ``average_precision_score`` per query on the retrieved items (scaled by retrieved relevant / all
    relevant, so unreachable relevant items count as never retrieved); top-k sorts each row with ties broken
    against the query (irrelevant first). Arguments as for ``evaluate_curve``. Slow: checks only.
    """
    from sklearn.metrics import average_precision_score  # the test extra: only when a check runs

    ex = resolve_exclude(queries.n, gallery.n, exclude=exclude, leave_one_out=leave_one_out)
    pts = np.asarray(points, dtype=np.float64).ravel()
    ap = np.full((queries.n, pts.size), np.nan)
    hits = np.zeros((queries.n, pts.size, 2), dtype=bool)
    relevant = (queries.labels[:, None] == gallery.labels[None, :]) & (queries.labels[:, None] >= 0)
    rows = np.nonzero(ex >= 0)[0]
    relevant[rows, ex[rows]] = False
    n_rel = relevant.sum(axis=1)
    for t, p in enumerate(pts):
        scores, _ = merged_scores(strategy, queries, gallery, order, p, exclude=ex)
        for i in np.nonzero(n_rel > 0)[0]:
            seen = np.isfinite(scores[i])
            rel, sc = relevant[i, seen], scores[i, seen]
            ap[i, t] = average_precision_score(rel, sc) * rel.sum() / n_rel[i] if rel.any() else 0.0
            ranked = rel[np.lexsort((rel, -sc.astype(np.float64)))]
            hits[i, t] = ranked[:1].any(), ranked[:5].any()
    return Curve(get_strategy(strategy).name, pts, ap, hits[..., 0], hits[..., 1], n_rel > 0)
