"""Retrieval metrics: AP, mAP, CMC, AUC over the backfill curve, relative gain, negative flips.

Conventions:

* A gallery item is relevant to a query when their labels match (negative labels = unknown, never relevant).
* Items a strategy cannot reach carry the score ``-inf``: they are never retrieved. A relevant item that is
  not retrieved adds 0 to the AP sum, and the AP denominator is always the number of relevant items.
* Ties. AP follows scikit-learn's ``average_precision_score``: with ``n_ge(s)`` the number of retrieved items
  scoring ``>= s`` and ``rel_ge(s)`` the number of retrieved relevant ones,
  ``AP = (1/R) * sum over retrieved relevant items r of rel_ge(s_r) / n_ge(s_r)`` (equal to the usual
  ``sum precision@rank / R`` when there are no ties). Top-k (CMC) is pessimistic: a query is a hit at k when
  fewer than k irrelevant items score ``>=`` its best relevant item.
* Queries with no relevant item get AP ``nan`` and are left out of means (callers report how many).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "ap_from_counts",
    "area_under_curve",
    "average_precision",
    "cmc",
    "hits_from_counts",
    "mean_average_precision",
    "negative_flip_rate",
    "relative_gain",
]


def ap_from_counts(
    n_ge: np.ndarray, rel_ge: np.ndarray, reached: np.ndarray, n_relevant: np.ndarray
) -> np.ndarray:
    """Per-query AP from counts at each relevant item.

    Parameters
    ----------
    n_ge : ndarray of shape (n_q, r)
        Number of retrieved items scoring ``>=`` relevant item j (itself included).
    rel_ge : ndarray of shape (n_q, r)
        Number of retrieved *relevant* items scoring ``>=`` item j.
    reached : ndarray of shape (n_q, r), bool
        False for padding and for relevant items that are not retrieved.
    n_relevant : ndarray of shape (n_q,)
        Number of relevant items, retrieved or not: the AP denominator.

    Returns
    -------
    ndarray of shape (n_q,), float64
        ``nan`` where ``n_relevant == 0``.
    """
    terms = np.where(reached, rel_ge / np.maximum(n_ge, 1), 0.0).sum(axis=1)
    n_rel = np.asarray(n_relevant)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, terms / np.maximum(n_rel, 1), np.nan)


def hits_from_counts(
    n_ge: np.ndarray, rel_ge: np.ndarray, reached: np.ndarray, *, ks: Sequence[int] = (1, 5)
) -> np.ndarray:
    """Per-query top-k hits (pessimistic ties) from the same counts as :func:`ap_from_counts`.

    Returns ``(n_q, len(ks))`` bool: fewer than ``k`` irrelevant items score ``>=`` the best retrieved
    relevant item. A query with no retrieved relevant item is a miss.
    """
    never = np.iinfo(np.int64).max
    irrelevant = np.asarray(n_ge, dtype=np.int64) - np.asarray(rel_ge, dtype=np.int64)
    irrelevant_above = np.where(reached, irrelevant, never).min(axis=1, initial=never)
    return irrelevant_above[:, None] < np.asarray(ks, dtype=np.int64)[None, :]


def _rows(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(relevant, dtype=bool)
    single = s.ndim == 1
    s, r = np.atleast_2d(s), np.atleast_2d(r)
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and relevant {r.shape} must have the same 1-D or 2-D shape")
    if s.shape[1] == 0:
        raise ValueError("scores: empty ranking")
    if np.isnan(s).any() or np.isposinf(s).any():
        raise ValueError("scores: NaN or +inf (use -inf for items that cannot be retrieved)")
    return s, r, single


def _counts(scores: np.ndarray, relevant: np.ndarray, r_max: int):
    """``n_ge``, ``rel_ge``, ``reached`` (each ``(n_q, r_max)``) for the relevant items of each row."""
    n_q = scores.shape[0]
    n_ge = np.zeros((n_q, r_max), dtype=np.int64)
    rel_ge = np.zeros((n_q, r_max), dtype=np.int64)
    reached = np.zeros((n_q, r_max), dtype=bool)
    for i in range(n_q):
        row = scores[i]
        rel = row[relevant[i]]
        rel = rel[np.isfinite(rel)]
        k = rel.size
        sorted_all, sorted_rel = np.sort(row), np.sort(rel)
        n_ge[i, :k] = row.size - np.searchsorted(sorted_all, rel, side="left")
        rel_ge[i, :k] = k - np.searchsorted(sorted_rel, rel, side="left")
        reached[i, :k] = True
    return n_ge, rel_ge, reached


def average_precision(
    scores: np.ndarray, relevant: np.ndarray, *, n_relevant: np.ndarray | int | None = None
) -> np.ndarray | float:
    """AP of each ranking (see the module docstring for ties and unreachable items).

    Parameters
    ----------
    scores : ndarray of shape (n_g,) or (n_q, n_g)
        Scores of every gallery item; ``-inf`` = not retrievable.
    relevant : ndarray of bool, same shape
        Which items are relevant.
    n_relevant : ndarray of shape (n_q,) or int, optional
        AP denominators; default: the number of relevant entries per row. Give it when relevant items are
        missing from ``scores`` altogether.

    Returns
    -------
    float or ndarray of shape (n_q,)
        A float for 1-D input; ``nan`` for a query without relevant items.
    """
    s, r, single = _rows(scores, relevant)
    n_rel = r.sum(axis=1) if n_relevant is None else np.broadcast_to(np.asarray(n_relevant), (s.shape[0],))
    if (n_rel < r.sum(axis=1)).any():
        raise ValueError("n_relevant is smaller than the number of relevant items given")
    ap = ap_from_counts(*_counts(s, r, max(int(r.sum(axis=1).max()), 1)), n_rel)
    return float(ap[0]) if single else ap


def mean_average_precision(ap: np.ndarray) -> float:
    """Mean of per-query AP over the queries that have relevant items (``nan`` entries are skipped).

    ``ValueError`` when no query has a relevant item.
    """
    ap = np.asarray(ap, dtype=np.float64)
    valid = ~np.isnan(ap)
    if not valid.any():
        raise ValueError("no query has a relevant item in the gallery: mAP is undefined")
    return float(ap[valid].mean())


def cmc(scores: np.ndarray, relevant: np.ndarray, *, ks: Sequence[int] = (1, 5)) -> np.ndarray:
    """Per-query top-k hits (pessimistic ties): ``(n_q, len(ks))`` bool (``(len(ks),)`` for 1-D input).

    The CMC value at k is the mean of column k over queries that have relevant items.
    """
    s, r, single = _rows(scores, relevant)
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be >= 1, got {list(ks)}")
    hits = hits_from_counts(*_counts(s, r, max(int(r.sum(axis=1).max()), 1)), ks=ks)
    return hits[0] if single else hits


def area_under_curve(values: Sequence[float] | np.ndarray) -> float:
    """AUC of a backfill curve = mean of the metric over the (evenly spaced) curve points."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"curve values: expected a non-empty 1-D sequence, got shape {arr.shape}")
    return float(arr.mean())


def relative_gain(auc: float, old: float, new: float) -> float:
    """Share of the new model's gain delivered by the process: ``(auc - old) / (new - old)``.

    ``old`` / ``new`` are the old/old and new/new values of the same metric. Returns ``nan`` when
    ``new == old`` (there is no gain to share).
    """
    if new == old:
        return float("nan")
    return float((auc - old) / (new - old))


def negative_flip_rate(old_correct: np.ndarray, correct: np.ndarray) -> np.ndarray | float:
    """Fraction of queries whose top-1 is right with the old model and wrong with the strategy.

    ``old_correct``: ``(n_q,)`` bool. ``correct``: ``(n_q,)`` bool (returns a float) or ``(n_q, T)`` along a
    curve (returns ``(T,)`` float64).
    """
    old = np.asarray(old_correct, dtype=bool)
    new = np.asarray(correct, dtype=bool)
    if old.ndim != 1 or new.shape[0] != old.shape[0] or new.ndim not in (1, 2):
        raise ValueError(f"old_correct {old.shape} and correct {new.shape}: expected (n_q,) and (n_q,[T])")
    if old.size == 0:
        raise ValueError("negative_flip_rate: no queries")
    flips = (old[:, None] if new.ndim == 2 else old) & ~new
    rate = flips.mean(axis=0)
    return float(rate) if new.ndim == 1 else rate
