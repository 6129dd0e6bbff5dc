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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backfill.embeddings import Embeddings, as_int64_vector
from backfill.metrics import (
    ap_from_counts,
    area_under_curve,
    hits_from_counts,
    negative_flip_rate,
    relative_gain,
)
from backfill.ordering import num_backfilled, validate_order
from backfill.strategies import NEW_REFERENCE, STRATEGIES, Side, Strategy, get_strategy

#: Bytes of working memory one query block may use (similarity rows, sorted copies and counts).
_BLOCK_BYTES = 192 * 2**20


def curve_points(n_points: int = 21) -> np.ndarray:
    """``n_points`` evenly spaced backfill ratios from 0 to 1 inclusive (21 -> 0, 0.05, ..., 1)."""
    if int(n_points) != n_points or n_points < 2:
        raise ValueError(f"number of curve points must be an integer >= 2, got {n_points!r}")
    return np.linspace(0.0, 1.0, int(n_points))


@dataclass
class Curve:
    """Per-query results of one strategy along the backfill curve.

    Attributes:
        strategy: strategy name.
        points: ``(T,)`` backfill ratios.
        ap: ``(n_q, T)`` float64 AP per query and point (``nan`` for queries without relevant items).
        hit1, hit5: ``(n_q, T)`` bool, top-1 / top-5 correct (False for queries without relevant items).
        valid: ``(n_q,)`` bool, queries that have at least one relevant gallery item.
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
class _Problem:
    """Everything a side-configuration evaluation needs, with the gallery in backfill (position) order."""

    q_labels: np.ndarray  # (n_q,)
    g_labels: np.ndarray  # (N,) by position
    exclude_pos: np.ndarray  # (n_q,) position of the excluded item, -1 = none
    by_label_pos: np.ndarray  # positions sorted by label (stable)
    by_label_keys: np.ndarray  # the labels in that order


def _relevant_positions(prob: _Problem, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _evaluate_sides(
    u: tuple[np.ndarray, np.ndarray] | None,
    b: tuple[np.ndarray, np.ndarray] | None,
    ms: np.ndarray,
    prob: _Problem,
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
    # Size the blocks from the largest class (bytes per query: similarity rows and their sorted int64 keys,
    # then per relevant value the segment counts and the per-point arrays).
    r_guess = max(int(np.bincount(np.maximum(prob.g_labels, 0)).max()), 1)
    per_row = 24 * n + 2 * r_guess * (16 * (n_seg + 1) + 24 * ms.size)
    nb = block_size or int(np.clip(_BLOCK_BYTES // per_row, 1, 1024))
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
    if side is None:
        return None
    q, g = queries.array(side.query), gallery.array(side.gallery)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"dimension mismatch: query array '{side.query}' has d={q.shape[1]} but gallery array"
            f" '{side.gallery}' has d={g.shape[1]}"
        )
    return q, np.ascontiguousarray(g[order])


def resolve_exclude(
    n_queries: int, gallery_n: int, exclude: np.ndarray | None, leave_one_out: bool
) -> np.ndarray:
    """The gallery id excluded from each query's ranking ``(n_q,)`` int64 (``-1`` = none).

    ``leave_one_out`` means queries *are* the gallery (query i is gallery item i); otherwise ``exclude``
    (``(n_q,)`` ids or -1) or nothing.
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
    ex = as_int64_vector(exclude, "exclude", n_queries)
    if (ex < -1).any() or (ex >= gallery_n).any():
        raise ValueError(f"exclude: ids must be -1 (none) or in [0, {gallery_n - 1}]")
    return ex


def evaluate_curve(
    strategy: str | Strategy,
    queries: Embeddings,
    gallery: Embeddings,
    order: np.ndarray,
    points: Sequence[float] | np.ndarray | None = None,
    leave_one_out: bool = False,
    exclude: np.ndarray | None = None,
    block_size: int | None = None,
) -> Curve:
    """AP / top-1 / top-5 of every query at every backfill ratio of ``points`` for one strategy.

    Args:
        strategy: a name of :data:`backfill.strategies.STRATEGIES`, ``"new"`` (the new/new reference) or a
            :class:`Strategy`.
        queries: query embeddings with labels (``-1`` = unknown: such queries are excluded and counted).
        gallery: gallery embeddings with labels.
        order: backfill order, a permutation of the gallery ids.
        points: ratios in [0, 1] (default :func:`curve_points` ``(21)``); one point gives per-query results
            at one ratio.
        leave_one_out: queries are the gallery; each query's own item is dropped from its ranking.
        exclude: ``(n_q,)`` gallery id to drop per query (``-1`` = none), e.g. for a query that is a gallery
            item; exclusive with ``leave_one_out``.
        block_size: queries per block (default: sized to ~192 MiB of working memory).

    Returns a :class:`Curve`. Raises ``ValueError`` for missing arrays (named), dimension mismatches, bad
    ratios or orders.
    """
    strat = get_strategy(strategy)
    queries.require(strat.query_arrays, f"strategy '{strat.name}' (queries)")
    gallery.require(strat.gallery_arrays, f"strategy '{strat.name}' (gallery)")
    n = gallery.n
    order = validate_order(order, n)
    pts = curve_points() if points is None else np.asarray(points, dtype=np.float64).ravel()
    if pts.size == 0:
        raise ValueError("points: no backfill ratio given")
    ms = np.array([num_backfilled(p, n) for p in pts], dtype=np.int64)
    if block_size is not None and (int(block_size) != block_size or block_size < 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    ex = resolve_exclude(queries.n, n, exclude, leave_one_out)
    g_labels = gallery.labels[order]
    by_label = np.argsort(g_labels, kind="stable")
    prob = _Problem(
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


def summarize_curve(curve: Curve, old: Curve | None = None, new_map: float | None = None) -> dict:
    """JSON-ready summary of one curve.

    Keys: ``points``, ``map``, ``top1``, ``top5`` (lists), ``auc_map``, ``auc_top1``, ``auc_top5``; with
    ``old`` (the old/old curve of the same queries; its first point is used, old/old does not depend on
    the ratio): ``negative_flip`` (list: share of counted queries whose old/old top-1 is right and this
    curve's is wrong) and ``max_negative_flip``; with ``old`` and ``new_map`` (new/new mAP):
    ``relative_gain`` = (auc_map - old/old mAP) / (new_map - old/old mAP), ``None`` when new == old.
    """
    out: dict = {
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


def evaluate_strategies(
    embeddings: Embeddings,
    strategies: Sequence[str] | None,
    order: np.ndarray,
    points: Sequence[float] | np.ndarray | None = None,
    block_size: int | None = None,
) -> dict:
    """Evaluate several strategies with the queries = the gallery (leave-one-out): the CLI's JSON.

    ``strategies`` default: every strategy of :data:`STRATEGIES` whose arrays ``embeddings`` holds (an
    explicit list must be fully available, else ``ValueError`` naming the missing arrays). Returns::

        {"points": [...], "n_queries": int, "n_excluded_queries": int,
         "reference": {"old_map", "new_map", "old_top1", "new_top1"}   # those available
         "strategies": {name: {"label", "map": [...], "top1": [...], "top5": [...],
                               "auc_map", "auc_top1", "auc_top5",
                               "relative_gain",                      # when old and new are available
                               "negative_flip": [...], "max_negative_flip"}}}  # when old is available

    ``relative_gain`` = (auc_map - old/old mAP) / (new/new mAP - old/old mAP) (``None`` when undefined).
    """
    if strategies is None:
        names = [s for s, st in STRATEGIES.items() if set(st.required_arrays) <= set(embeddings.available)]
        if not names:
            have = ", ".join(embeddings.available)
            raise ValueError(f"no strategy can run on the arrays available ({have})")
    else:
        names = list(dict.fromkeys(strategies))
        for name in names:
            strat = get_strategy(name)
            embeddings.require(strat.required_arrays, f"strategy '{name}'")
    pts = curve_points() if points is None else np.asarray(points, dtype=np.float64)

    def run(name: str, at: np.ndarray) -> Curve:
        return evaluate_curve(name, embeddings, embeddings, order, at, True, block_size=block_size)

    reference: dict[str, float] = {}
    old_curve = new_map = None
    if "old" in embeddings.available:
        old_curve = run("old", np.zeros(1))
        reference.update(old_map=float(old_curve.map[0]), old_top1=float(old_curve.top1[0]))
    if "new" in embeddings.available:
        new_curve = run(NEW_REFERENCE.name, np.ones(1))
        new_map = float(new_curve.map[0])
        reference.update(new_map=new_map, new_top1=float(new_curve.top1[0]))
    out: dict = {"points": [float(p) for p in pts], "reference": reference, "strategies": {}}
    for name in names:
        curve = run(name, pts)
        out["n_queries"], out["n_excluded_queries"] = curve.n_queries, curve.n_excluded
        res = {"label": get_strategy(name).label, **summarize_curve(curve, old_curve, new_map)}
        del res["points"]
        out["strategies"][name] = res
    return out


def merged_scores(
    strategy: str | Strategy,
    queries: Embeddings,
    gallery: Embeddings,
    order: np.ndarray,
    ratio: float,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force merged score matrix at one ratio: ``(scores (n_q, N) float32, spaces (N,) uint8)``.

    ``scores[i, g]`` is the strategy's raw score of gallery id ``g`` for query ``i``; ``-inf`` where ``g`` is
    unreachable or excluded. ``spaces[g]`` is the space that scored ``g`` (0 old, 1 new). Memory ``n_q * N``:
    meant for small problems, checks and the reference evaluator.
    """
    strat = get_strategy(strategy)
    order = validate_order(order, gallery.n)
    m = num_backfilled(ratio, gallery.n)
    in_b = np.zeros(gallery.n, dtype=bool)
    in_b[order[:m]] = True
    ex = resolve_exclude(queries.n, gallery.n, exclude, leave_one_out=False)
    scores = np.full((queries.n, gallery.n), -np.inf, dtype=np.float32)
    spaces = np.zeros(gallery.n, dtype=np.uint8)
    for side, part in zip(strat.sides(float(ratio)), (~in_b, in_b), strict=True):
        if side is None or not part.any():
            continue
        q, g = _side_arrays(side, queries, gallery, np.arange(gallery.n))
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
    points: Sequence[float] | np.ndarray,
    leave_one_out: bool = False,
    exclude: np.ndarray | None = None,
) -> Curve:
    """The straightforward evaluator (as published evaluation code does it), to check the fast one.

    At every point it rebuilds the merged score matrix and calls scikit-learn's
    ``average_precision_score`` per query on the retrieved items (scaled by retrieved relevant / all
    relevant, so unreachable relevant items count as never retrieved); top-k sorts each row with ties broken
    against the query (irrelevant first). Needs scikit-learn (the ``test`` extra). Slow: checks only.
    """
    from sklearn.metrics import average_precision_score

    ex = resolve_exclude(queries.n, gallery.n, exclude, leave_one_out)
    pts = np.asarray(points, dtype=np.float64).ravel()
    ap = np.full((queries.n, pts.size), np.nan)
    hits = np.zeros((queries.n, pts.size, 2), dtype=bool)
    relevant = (queries.labels[:, None] == gallery.labels[None, :]) & (queries.labels[:, None] >= 0)
    rows = np.nonzero(ex >= 0)[0]
    relevant[rows, ex[rows]] = False
    n_rel = relevant.sum(axis=1)
    for t, p in enumerate(pts):
        scores, _ = merged_scores(strategy, queries, gallery, order, p, ex)
        for i in np.nonzero(n_rel > 0)[0]:
            seen = np.isfinite(scores[i])
            rel, sc = relevant[i, seen], scores[i, seen]
            ap[i, t] = average_precision_score(rel, sc) * rel.sum() / n_rel[i] if rel.any() else 0.0
            ranked = rel[np.lexsort((rel, -sc.astype(np.float64)))]
            hits[i, t] = ranked[:1].any(), ranked[:5].any()
    return Curve(get_strategy(strategy).name, pts, ap, hits[..., 0], hits[..., 1], n_rel > 0)
