"""Fast, exact evaluation of retrieval quality along the backfill curve.

For every query, AP and top-k at ratio p only need, for each relevant item r, the number of gallery items
that score ``>=`` r's score at p (``n_ge``) and how many of those are relevant (``rel_ge``); see
:mod:`backfill.metrics`. The gallery, stored in backfill order, is cut into segments between consecutive
curve points: at the k-th point the first k segments are backfilled (scored by the strategy's B side) and
the rest are not (U side). So per query block we compute the two similarity rows once, sort each segment of
each row once, and count, with one binary search per (relevant score, segment), the items of that segment
scoring ``>=`` it on each side. Prefix sums over segments then give ``n_ge`` at every point; no similarity
or full sort is recomputed per ratio.

Tie rules are those of :mod:`backfill.metrics` (AP as scikit-learn; pessimistic top-k). The excluded item
of a query (leave-one-out) is neither retrieved nor relevant. Items a strategy cannot reach
(``new_partial``'s U) are never retrieved; a relevant one still counts in the AP denominator. Queries with no
relevant item (unknown label, or a class with no other member) are left out of every mean and counted.
Slow reference evaluators for checks live in :mod:`backfill.testing`, JSON summaries in
:mod:`backfill.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backfill._validation import check_int
from backfill.embeddings import Embeddings
from backfill.metrics import ap_from_counts, hits_from_counts
from backfill.ordering import num_backfilled, resolve_exclude, validate_order
from backfill.strategies import Side, Strategy, get_strategy

__all__ = ["Curve", "curve_points", "evaluate_curve"]

#: Bytes of working memory one query block may use (similarity rows, sorted copies and counts).
_BLOCK_BYTES = 192 * 2**20


def curve_points(n_points: int = 21) -> np.ndarray:
    """``n_points`` evenly spaced backfill ratios from 0 to 1 inclusive (21 -> 0, 0.05, ..., 1)."""
    return np.linspace(0.0, 1.0, check_int(n_points, "number of curve points", minimum=2))


@dataclass
class Curve:
    """Per-query results of one strategy along the backfill curve.

    Parameters
    ----------
    strategy : str
        Strategy name.
    points : ndarray of shape (T,)
        Backfill ratios.
    ap : ndarray of shape (n_q, T), float64
        AP per query and point (``nan`` for queries without relevant items).
    hit1, hit5 : ndarray of shape (n_q, T), bool
        Top-1 / top-5 correct (False for queries without relevant items).
    valid : ndarray of shape (n_q,), bool
        Queries that have at least one relevant gallery item.
    """

    strategy: str
    points: np.ndarray
    ap: np.ndarray
    hit1: np.ndarray
    hit5: np.ndarray
    valid: np.ndarray

    @property
    def n_queries(self) -> int:
        """Queries counted in the means."""
        return int(self.valid.sum())

    @property
    def n_excluded(self) -> int:
        """Queries left out because they have no relevant gallery item."""
        return int((~self.valid).sum())

    def _mean(self, per_query: np.ndarray) -> np.ndarray:
        if not self.valid.any():
            raise ValueError("no query has a relevant item in the gallery: the metrics are undefined")
        return per_query[self.valid].mean(axis=0).astype(np.float64)

    @property
    def map(self) -> np.ndarray:
        """``(T,)`` mAP at each point."""
        return self._mean(self.ap)

    @property
    def top1(self) -> np.ndarray:
        """``(T,)`` CMC top-1 at each point."""
        return self._mean(self.hit1)

    @property
    def top5(self) -> np.ndarray:
        """``(T,)`` CMC top-5 at each point."""
        return self._mean(self.hit5)


def _order_keys(x: np.ndarray) -> np.ndarray:
    """Exact order-preserving int64 keys of float32 scores (``-0.0`` must already be ``+0.0``).

    Flipping the 31 low bits of negative floats makes their int32 bit patterns sort like the floats, with
    equal floats <-> equal keys and -inf/+inf at the ends. ``x`` is overwritten (it is a scratch copy).
    """
    bits = x.view(np.int32)
    flip = bits >> 31
    flip &= np.int32(0x7FFFFFFF)
    bits ^= flip
    return bits.astype(np.int64)


def _segment_counts(
    scores: np.ndarray, values: np.ndarray, n_values: np.ndarray, bounds: np.ndarray
) -> np.ndarray:
    """``counts[i, s, v]`` = number of entries of ``scores[i, bounds[s]:bounds[s+1]]`` ``>= values[i, v]``.

    ``scores`` ``(nb, N)`` float32, ``values`` ``(nb, V)`` float32 sorted ascending per row, of which only the
    first ``n_values[i]`` of row i are needed (the rest get count 0), ``bounds`` ``(S+1,)`` increasing from 0
    to N. Each segment is sorted once; the values are then located in all segments with one binary search
    call per row over exact integer keys ``(segment << 32) + key(score)``, which keep segments apart; sorted
    values keep the successive searches in cache.
    """
    nb, n = scores.shape
    lengths = np.diff(bounds)
    n_seg = lengths.size
    if (lengths == lengths[0]).all():
        ordered = np.sort(scores.reshape(nb, n_seg, lengths[0]), axis=2).reshape(nb, n)
    else:
        ordered = np.empty_like(scores)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            ordered[:, a:b] = np.sort(scores[:, a:b], axis=1)
    seg_shift = np.arange(n_seg, dtype=np.int64) << 32
    keys = _order_keys(ordered)
    keys += np.repeat(seg_shift, lengths)
    value_keys = _order_keys(values.copy())[:, None, :] + seg_shift[:, None]
    counts = np.zeros((nb, n_seg, values.shape[1]), dtype=np.int32)
    ends = bounds[1:, None]
    for i in range(nb):  # numpy has no batched searchsorted; per row, its keys stay in cache
        nv = n_values[i]
        found = np.searchsorted(keys[i], value_keys[i, :, :nv].ravel(), side="left").reshape(n_seg, nv)
        counts[i, :, :nv] = ends - found
    return counts


def _tie_group_start(ordered: np.ndarray) -> np.ndarray:
    """For rows sorted ascending: index of the first entry equal to each entry ``(nb, V)``."""
    nb, v = ordered.shape
    new_group = np.ones((nb, v), dtype=bool)
    new_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return np.maximum.accumulate(np.where(new_group, np.arange(v), 0), axis=1)


@dataclass
class _Relevance:
    """What finding each query's relevant items needs, with the gallery in backfill (position) order."""

    q_labels: np.ndarray  # (n_q,)
    g_labels: np.ndarray  # (N,) by position
    exclude_pos: np.ndarray  # (n_q,) position of the excluded item, -1 = none
    by_label_pos: np.ndarray  # positions sorted by label (stable)
    by_label_keys: np.ndarray  # the labels in that order


def _relevant_positions(prob: _Relevance, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded relevant positions ``(nb, R)``, their mask, and the number relevant ``(nb,)``."""
    labels = prob.q_labels[rows]
    lo = np.searchsorted(prob.by_label_keys, labels, side="left")
    hi = np.searchsorted(prob.by_label_keys, labels, side="right")
    hi = np.where(labels < 0, lo, hi)
    counts = hi - lo
    r_max = max(int(counts.max()), 1)
    offs = np.arange(r_max)
    mask = offs[None, :] < counts[:, None]
    pos = prob.by_label_pos[np.minimum(lo[:, None] + offs[None, :], prob.by_label_pos.size - 1)]
    excl = prob.exclude_pos[rows]
    mask &= pos != excl[:, None]
    return np.where(mask, pos, 0), mask, mask.sum(axis=1)


def _block_rows(prob: _Relevance, n_seg: int, n_points: int) -> int:
    """Queries per block so that one block's working memory stays near ``_BLOCK_BYTES``.

    Sized from the largest class; bytes per query: similarity rows and their sorted int64 keys, then per
    relevant value the segment counts and the per-point arrays.
    """
    n = prob.g_labels.size
    r_guess = max(int(np.bincount(np.maximum(prob.g_labels, 0)).max()), 1)
    per_row = 24 * n + 2 * r_guess * (16 * (n_seg + 1) + 24 * n_points)
    return int(np.clip(_BLOCK_BYTES // per_row, 1, 1024))


def _evaluate_sides(
    u: tuple[np.ndarray, np.ndarray] | None,
    b: tuple[np.ndarray, np.ndarray] | None,
    ms: np.ndarray,
    prob: _Relevance,
    block_size: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP ``(n_q, T)``, hits ``(n_q, T, 2)`` and number relevant ``(n_q,)`` for fixed sides.

    ``u`` / ``b`` are (queries, gallery-in-position-order) pairs or ``None`` (unreachable); ``ms`` ``(T,)``
    are the numbers backfilled at each point.
    """
    n_q = prob.q_labels.size
    n = prob.g_labels.size
    bounds = np.unique(np.concatenate([[0, n], ms]))
    bound_index = np.searchsorted(bounds, ms)
    n_seg = bounds.size - 1
    ap = np.empty((n_q, ms.size), dtype=np.float64)
    hits = np.empty((n_q, ms.size, 2), dtype=bool)
    n_rel_all = np.empty(n_q, dtype=np.int64)
    nb = block_size or _block_rows(prob, n_seg, ms.size)
    start = 0
    while start < n_q:
        rows = np.arange(start, min(start + nb, n_q))
        start = rows[-1] + 1
        relpos, mask, n_rel = _relevant_positions(prob, rows)
        n_rel_all[rows] = n_rel
        r = relpos.shape[1]
        excl = prob.exclude_pos[rows]
        has_excl = np.nonzero(excl >= 0)[0]
        sims, rel_scores = [], []
        for side in (u, b):
            if side is None:
                sims.append(None)
                rel_scores.append(np.full((rows.size, r), np.inf, dtype=np.float32))
                continue
            row_sims = side[0][rows] @ side[1].T
            row_sims += np.float32(0.0)  # -0.0 -> +0.0, so that equal scores get equal keys
            row_sims[has_excl, excl[has_excl]] = -np.inf  # never retrieved, never counted
            sims.append(row_sims)
            rel_scores.append(np.take_along_axis(row_sims, relpos, axis=1))
        # The values to count items above: the U-side then the B-side score of each relevant item, sorted
        # per row. Padding and unreachable sides become +inf, which no item reaches; they are never active.
        values = np.where(np.tile(mask, 2), np.concatenate(rel_scores, axis=1), np.inf)
        perm = np.argsort(values, axis=1, kind="stable")
        values = np.take_along_axis(values, perm, axis=1)
        item = perm % r
        value_pos = np.take_along_axis(relpos, item, axis=1)
        value_is_b = perm >= r
        value_ok = np.take_along_axis(mask, item, axis=1) & np.where(value_is_b, b is not None, u is not None)
        group_start = _tie_group_start(values)
        n_values = value_ok.sum(axis=1)  # the needed values come first (the others are +inf)
        no_side = np.zeros((rows.size, n_seg, 2 * r), np.int32)
        cu, cb = (no_side if x is None else _segment_counts(x, values, n_values, bounds) for x in sims)
        del sims
        # n_ge at bound k: B-side counts of segments < k plus U-side counts of segments >= k.
        n_ge_all = np.zeros((rows.size, n_seg + 1, 2 * r), dtype=np.int32)
        np.cumsum(cb, axis=1, dtype=np.int32, out=n_ge_all[:, 1:])
        n_ge_all[:, :-1] += np.cumsum(cu[:, ::-1], axis=1, dtype=np.int32)[:, ::-1]
        n_ge = n_ge_all[:, bound_index]  # (nb, T, V)
        # At each point every reachable relevant item has exactly one active value: its current score.
        in_b = value_pos[:, None, :] < ms[None, :, None]
        active = value_ok[:, None, :] & (value_is_b[:, None, :] == in_b)
        at_or_above = np.cumsum(active[..., ::-1], axis=2, dtype=np.int32)[..., ::-1]
        rel_ge = np.take_along_axis(at_or_above, np.broadcast_to(group_start[:, None, :], n_ge.shape), axis=2)
        flat = (n_ge.reshape(-1, 2 * r), rel_ge.reshape(-1, 2 * r), active.reshape(-1, 2 * r))
        ap[rows] = ap_from_counts(*flat, np.repeat(n_rel, ms.size)).reshape(rows.size, ms.size)
        hits[rows] = hits_from_counts(*flat, ks=(1, 5)).reshape(rows.size, ms.size, 2)
    return ap, hits, n_rel_all


def _side_arrays(side: Side | None, queries: Embeddings, gallery: Embeddings, order: np.ndarray):
    """``side``'s query array and its gallery array in backfill (position) order; ``None`` if unreachable."""
    if side is None:
        return None
    q, g = side.arrays(queries, gallery)
    return q, np.ascontiguousarray(g[order])


def evaluate_curve(
    strategy: str | Strategy,
    queries: Embeddings,
    gallery: Embeddings,
    order: np.ndarray,
    *,
    points: Sequence[float] | np.ndarray | None = None,
    leave_one_out: bool = False,
    exclude: np.ndarray | None = None,
    block_size: int | None = None,
) -> Curve:
    """AP / top-1 / top-5 of every query at every backfill ratio of ``points`` for one strategy.

    Parameters
    ----------
    strategy : str or Strategy
        A name of :data:`backfill.strategies.STRATEGIES`, ``"new"`` (the new/new reference) or a
        :class:`~backfill.strategies.Strategy`.
    queries : Embeddings
        Query embeddings with labels (``-1`` = unknown: such queries are excluded and counted).
    gallery : Embeddings
        Gallery embeddings with labels.
    order : array-like of shape (n_gallery,)
        Backfill order, a permutation of the gallery ids.
    points : array-like of shape (T,), optional
        Ratios in [0, 1] (default :func:`curve_points` ``(21)``); one point gives per-query results at one
        ratio.
    leave_one_out : bool, default=False
        Queries are the gallery; each query's own item is dropped from its ranking.
    exclude : array-like of shape (n_queries,), optional
        Gallery id to drop per query (``-1`` = none), e.g. for a query that is a gallery item; exclusive
        with ``leave_one_out``.
    block_size : int, optional
        Queries per block (default: sized to ~192 MiB of working memory).

    Returns
    -------
    Curve

    Raises
    ------
    ValueError
        For missing arrays (named), dimension mismatches, bad ratios or orders.
    """
    strat = get_strategy(strategy)
    queries.require(strat.query_arrays, purpose=f"strategy '{strat.name}' (queries)")
    gallery.require(strat.gallery_arrays, purpose=f"strategy '{strat.name}' (gallery)")
    n = gallery.n
    order = validate_order(order, n)
    pts = curve_points() if points is None else np.asarray(points, dtype=np.float64).ravel()
    if pts.size == 0:
        raise ValueError("points: no backfill ratio given")
    ms = np.array([num_backfilled(p, n) for p in pts], dtype=np.int64)
    if block_size is not None:
        block_size = check_int(block_size, "block_size")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    ex = resolve_exclude(queries.n, n, exclude=exclude, leave_one_out=leave_one_out)
    g_labels = gallery.labels[order]
    by_label = np.argsort(g_labels, kind="stable")
    prob = _Relevance(
        q_labels=queries.labels,
        g_labels=g_labels,
        exclude_pos=np.where(ex >= 0, position[np.maximum(ex, 0)], -1),
        by_label_pos=by_label,
        by_label_keys=g_labels[by_label],
    )
    ap = np.empty((queries.n, pts.size))
    hits = np.empty((queries.n, pts.size, 2), dtype=bool)
    n_rel = np.zeros(queries.n, dtype=np.int64)
    groups: dict[tuple, list[int]] = {}
    for t, p in enumerate(pts):
        groups.setdefault(strat.sides(float(p)), []).append(t)
    for (u_side, b_side), idx in groups.items():
        idx = np.asarray(idx)
        group_ms = ms[idx]
        if u_side == b_side:  # one space for every item: the ranking does not depend on the ratio
            group_ms, b_side = np.zeros(1, dtype=np.int64), None
        u = _side_arrays(u_side, queries, gallery, order)
        b = _side_arrays(b_side, queries, gallery, order)
        g_ap, g_hits, n_rel = _evaluate_sides(u, b, group_ms, prob, block_size)
        # A single evaluated point (ratio-independent ranking) broadcasts to the whole group.
        ap[:, idx] = g_ap if g_ap.shape[1] == idx.size else g_ap[:, :1]
        hits[:, idx] = g_hits if g_hits.shape[1] == idx.size else g_hits[:, :1]
    return Curve(strat.name, pts, ap, hits[..., 0], hits[..., 1], n_rel > 0)
