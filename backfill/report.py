"""JSON-ready summaries of backfill curves: what ``backfill evaluate`` and ``backfill reproduce`` write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backfill.embeddings import Embeddings
from backfill.evaluation import Curve, curve_points, evaluate_curve
from backfill.metrics import area_under_curve, negative_flip_rate, relative_gain
from backfill.strategies import NEW_REFERENCE, STRATEGIES, Strategy, resolve_strategy

__all__ = ["evaluate_strategies", "summarize_curve"]


def summarize_curve(curve: Curve, *, old: Curve | None = None, new_map: float | None = None) -> dict[str, Any]:
    """JSON-ready summary of one curve.

    Parameters
    ----------
    curve : Curve
        The curve to summarise.
    old : Curve, optional
        The old/old curve of the same queries (its first point is used: old/old does not depend on the
        ratio); adds ``negative_flip`` and ``max_negative_flip``.
    new_map : float, optional
        The new/new mAP; with ``old``, adds ``relative_gain``.

    Returns
    -------
    dict
        ``points``, ``map``, ``top1``, ``top5`` (lists), ``auc_map``, ``auc_top1``, ``auc_top5``; with
        ``old``: ``negative_flip`` (list: share of counted queries whose old/old top-1 is right and this
        curve's is wrong) and ``max_negative_flip``; with ``old`` and ``new_map``: ``relative_gain`` =
        (auc_map - old/old mAP) / (new_map - old/old mAP), ``None`` when new == old.
    """
    out: dict[str, Any] = {
        "points": [float(p) for p in curve.points],
        "map": curve.map.tolist(),
        "top1": curve.top1.tolist(),
        "top5": curve.top5.tolist(),
        "auc_map": area_under_curve(curve.map),
        "auc_top1": area_under_curve(curve.top1),
        "auc_top5": area_under_curve(curve.top5),
    }
    if old is not None:
        if old.valid.shape != curve.valid.shape:
            raise ValueError("old curve: evaluated on different queries")
        flips = negative_flip_rate(old.hit1[curve.valid, 0], curve.hit1[curve.valid])
        out["negative_flip"] = flips.tolist()
        out["max_negative_flip"] = float(flips.max())
        if new_map is not None:
            gain = relative_gain(out["auc_map"], float(old.map[0]), float(new_map))
            out["relative_gain"] = None if np.isnan(gain) else gain
    return out


def _chosen(embeddings: Embeddings, strategies: Sequence[str | Strategy] | None) -> list[Strategy]:
    """The strategies to run: all those ``embeddings`` supports, or the given ones (checked, deduplicated)."""
    if strategies is None:
        chosen = [s for s in STRATEGIES.values() if s.runs_on(embeddings.available)]
        if not chosen:
            raise ValueError(f"no strategy can run on the arrays available ({', '.join(embeddings.available)})")
        return chosen
    by_name = {}
    for item in strategies:
        strat = resolve_strategy(item)
        by_name.setdefault(strat.name, strat)  # the first of duplicate names wins, order kept
    for name, strat in by_name.items():
        embeddings.require(strat.required_arrays, purpose=f"strategy '{name}'")
    return list(by_name.values())


def evaluate_strategies(
    embeddings: Embeddings,
    *,
    order: np.ndarray,
    strategies: Sequence[str | Strategy] | None = None,
    points: Sequence[float] | np.ndarray | None = None,
    block_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate several strategies with the queries = the gallery (leave-one-out): the CLI's JSON.

    Parameters
    ----------
    embeddings : Embeddings
        Queries and gallery at once.
    order : array-like of shape (n,)
        Backfill order, a permutation of ``0..n-1``.
    strategies : sequence of str or Strategy, optional
        Names of :data:`~backfill.strategies.STRATEGIES` or :data:`~backfill.strategies.ALIASES` (an alias
        is reported under its own name, e.g. ``full``), or strategies; duplicates are dropped, order kept.
        Every one must be runnable (``ValueError`` naming the missing arrays). Default: every strategy
        whose arrays ``embeddings`` holds.
    points : array-like of shape (T,), optional
        Backfill ratios (default :func:`~backfill.evaluation.curve_points` ``(21)``).
    block_size : int, optional
        Queries per block of the evaluator.

    Returns
    -------
    dict
        ::

            {"points": [...], "n_queries": int, "n_excluded_queries": int,
             "reference": {"old_map", "new_map", "old_top1", "new_top1"},   # those available
             "strategies": {name: {"label", "map": [...], "top1": [...], "top5": [...],
                                   "auc_map", "auc_top1", "auc_top5",
                                   "relative_gain",                         # when old and new exist
                                   "negative_flip": [...], "max_negative_flip"}}}  # when old exists

        ``relative_gain`` = (auc_map - old/old mAP) / (new/new mAP - old/old mAP), ``None`` when undefined.
    """
    chosen = _chosen(embeddings, strategies)
    pts = curve_points() if points is None else np.asarray(points, dtype=np.float64)

    def run(strategy: str | Strategy, at: np.ndarray) -> Curve:
        return evaluate_curve(
            strategy, embeddings, embeddings, order, points=at, leave_one_out=True, block_size=block_size
        )

    reference: dict[str, float] = {}
    old_curve = new_map = None
    if "old" in embeddings.available:
        old_curve = run("old", np.zeros(1))
        reference.update(old_map=float(old_curve.map[0]), old_top1=float(old_curve.top1[0]))
    if "new" in embeddings.available:
        new_curve = run(NEW_REFERENCE, np.ones(1))
        new_map = float(new_curve.map[0])
        reference.update(new_map=new_map, new_top1=float(new_curve.top1[0]))
    out: dict[str, Any] = {"points": [float(p) for p in pts], "reference": reference, "strategies": {}}
    for strat in chosen:
        curve = run(strat, pts)
        out["n_queries"], out["n_excluded_queries"] = curve.n_queries, curve.n_excluded
        res = {"label": strat.label, **summarize_curve(curve, old=old_curve, new_map=new_map)}
        del res["points"]
        out["strategies"][strat.name] = res
    return out
