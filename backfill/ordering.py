"""Backfill orders and the backfill state.

An order is a permutation of the gallery ids ``0..N-1``: the sequence in which items get re-embedded. At
ratio ``p`` the backfilled set B_p is the first ``num_backfilled(p, N)`` ids of the order, the rest is U_p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from backfill._validation import as_int64_vector, check_matrix, check_ratio

__all__ = [
    "BackfillState",
    "class_centroids",
    "classifier_entropy_priority",
    "nearest_centroid_priority",
    "num_backfilled",
    "oracle_priority",
    "order_by_score",
    "random_order",
    "resolve_exclude",
    "validate_order",
]


def num_backfilled(ratio: float, n: int) -> int:
    """Number of backfilled items ``m`` at ratio ``ratio`` of a gallery of ``n`` items.

    Rounding rule: ``m = floor(p * n + 0.5)`` (round half up, not Python's banker's rounding), computed on
    ``p * n`` first rounded to 9 decimals so that ratios such as ``0.35`` from ``np.linspace`` give the same
    ``m`` as the decimal value. ``ValueError`` when ``ratio`` is not a finite number in ``[0, 1]`` or
    ``n < 0``.
    """
    p = check_ratio(ratio)
    if n < 0:
        raise ValueError(f"gallery size must be >= 0, got {n}")
    return min(n, int(math.floor(round(p * n, 9) + 0.5)))


def validate_order(order: np.ndarray, n: int) -> np.ndarray:
    """Return ``order`` as an int64 ``(n,)`` array after checking it is a permutation of ``0..n-1``.

    ``ValueError`` names the problem: wrong shape or length, non-integer values, out-of-range or repeated ids.
    """
    arr = as_int64_vector(order, "order", n=n)
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"order: ids must lie in [0, {n - 1}], got range [{arr.min()}, {arr.max()}]")
    counts = np.bincount(arr, minlength=n)
    if (counts != 1).any():
        raise ValueError(
            f"order: not a permutation ({int((counts > 1).sum())} repeated id(s),"
            f" {int((counts == 0).sum())} missing id(s))"
        )
    return np.ascontiguousarray(arr)


def resolve_exclude(
    n_queries: int, gallery_n: int, *, exclude: np.ndarray | None = None, leave_one_out: bool = False
) -> np.ndarray:
    """The gallery id excluded from each query's ranking, ``(n_queries,)`` int64 (``-1`` = none).

    Parameters
    ----------
    n_queries, gallery_n : int
        Numbers of queries and of gallery items.
    exclude : array-like of shape (n_queries,), optional
        Gallery id to drop per query, ``-1`` for none; exclusive with ``leave_one_out``.
    leave_one_out : bool, default=False
        The queries *are* the gallery: query i drops gallery item i.
    """
    if leave_one_out:
        if exclude is not None:
            raise ValueError("give either leave_one_out or exclude, not both")
        if n_queries != gallery_n:
            raise ValueError(
                f"leave-one-out needs the queries to be the gallery, but there are {n_queries} queries"
                f" and {gallery_n} gallery items"
            )
        return np.arange(n_queries, dtype=np.int64)
    if exclude is None:
        return np.full(n_queries, -1, dtype=np.int64)
    ex = as_int64_vector(exclude, "exclude", n=n_queries)
    if (ex < -1).any() or (ex >= gallery_n).any():
        raise ValueError(f"exclude: ids must be -1 (none) or in [0, {gallery_n - 1}]")
    return ex


def random_order(n: int, *, seed: int | None = 0) -> np.ndarray:
    """A uniformly random order of ``n`` items (the paper's default), reproducible from ``seed``."""
    if n < 0:
        raise ValueError(f"gallery size must be >= 0, got {n}")
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def order_by_score(scores: np.ndarray) -> np.ndarray:
    """The order that backfills the highest ``scores`` (n,) first; ties go to the lower id (stable)."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores: expected a 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("scores: contains NaN or infinite values")
    return np.argsort(-arr, kind="stable").astype(np.int64)


def class_centroids(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised mean embedding of each class.

    Returns ``(classes (c,) int64, centroids (c, d) float32)``.
    """
    emb = check_matrix(embeddings, "embeddings")
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (emb.shape[0],):
        raise ValueError(f"labels: expected shape ({emb.shape[0]},), got {lab.shape}")
    classes, inverse = np.unique(lab, return_inverse=True)
    sums = np.zeros((classes.size, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, emb)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return classes, (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def nearest_centroid_priority(old: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Deployable priority from stored old embeddings only: ``1 - max_c cos(phi_o(g), centroid_c)``.

    ``centroids`` ``(c, d_o)`` are old-space class centroids (e.g. of the old model's training set, see
    :func:`class_centroids`). Items far from every known class are the ones the old model understands least,
    so they are backfilled first (FastFill's uncertainty-first idea). Returns ``(n,)`` float64; feed it to
    :func:`order_by_score`.
    """
    emb = check_matrix(old, "old")
    cen = check_matrix(centroids, "centroids")
    if cen.shape[1] != emb.shape[1]:
        raise ValueError(f"centroids: dimension {cen.shape[1]} does not match old embeddings' {emb.shape[1]}")
    return 1.0 - (emb @ cen.T).max(axis=1).astype(np.float64)


def classifier_entropy_priority(
    old: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, temperature: float = 1.0
) -> np.ndarray:
    """Deployable priority: entropy of the old classifier's softmax on the stored old embeddings.

    ``logits = old @ weight.T + bias`` (``weight`` ``(c, d_o)``, ``bias`` ``(c,)``), divided by
    ``temperature``. Items the old model is least sure about are backfilled first (FastFill's
    uncertainty-first order). Returns ``(n,)`` float64 entropies in nats; feed it to :func:`order_by_score`.
    """
    emb = check_matrix(old, "old").astype(np.float64)
    w = check_matrix(weight, "weight").astype(np.float64)
    if w.shape[1] != emb.shape[1]:
        raise ValueError(f"weight: dimension {w.shape[1]} does not match old embeddings' {emb.shape[1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    logits = emb @ w.T
    if bias is not None:
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias: expected shape ({w.shape[0]},), got {b.shape}")
        logits += b
    logits /= temperature
    logits -= logits.max(axis=1, keepdims=True)  # stable softmax
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)


def oracle_priority(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Upper-bound reference priority that peeks at new embeddings and labels (not deployable).

    For each item, margin_space = cos(own-class centroid) - max cos(other-class centroid) in that space, with
    centroids of the gallery itself; priority = margin_new - margin_old, i.e. the items that the new model
    places in their class much better than the old one are backfilled first. Returns ``(n,)`` float64.
    """
    lab = np.asarray(labels, dtype=np.int64)
    priority = np.zeros(lab.shape[0], dtype=np.float64)
    for sign, emb in ((-1.0, old), (1.0, new)):
        classes, cen = class_centroids(emb, lab)
        sims = np.asarray(emb, dtype=np.float32) @ cen.T
        own = np.searchsorted(classes, lab)
        rows = np.arange(lab.shape[0])
        own_sim = sims[rows, own].copy()
        sims[rows, own] = -np.inf
        other = sims.max(axis=1) if classes.size > 1 else np.full_like(own_sim, -1.0)
        priority += sign * (own_sim - other)
    return priority


@dataclass(frozen=True)
class BackfillState:
    """The gallery at one moment of backfilling: ``order`` (a permutation) and ``ratio`` in [0, 1].

    Attributes (derived): ``n`` gallery size, ``m`` number backfilled (see :func:`num_backfilled`),
    ``backfilled`` ids of B (the first ``m`` of the order), ``remaining`` ids of U, ``mask`` ``(n,)`` bool,
    True for backfilled ids.
    """

    order: np.ndarray
    ratio: float
    n: int = field(init=False)
    m: int = field(init=False)

    def __post_init__(self) -> None:
        order = np.asarray(self.order)
        order = validate_order(order, order.shape[0] if order.ndim == 1 else -1)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "n", order.shape[0])
        object.__setattr__(self, "m", num_backfilled(self.ratio, order.shape[0]))

    @property
    def backfilled(self) -> np.ndarray:
        return self.order[: self.m]

    @property
    def remaining(self) -> np.ndarray:
        return self.order[self.m :]

    @property
    def mask(self) -> np.ndarray:
        out = np.zeros(self.n, dtype=bool)
        out[self.backfilled] = True
        return out
