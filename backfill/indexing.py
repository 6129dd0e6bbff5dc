"""Top-k search over a gallery in the middle of backfilling, with faiss.

The gallery's arrays are stored in backfill order in static ``faiss.IndexFlatIP`` indexes (exact inner
product on L2-normalised float32, i.e. cosine). At ratio p the first ``m = num_backfilled(p, N)`` positions
are the backfilled part B, searched with an ``IDSelectorRange(0, m)`` in the index of the strategy's B-side
gallery array; the rest U is searched with ``IDSelectorRange(m, N)`` in the U-side array's index. The two
top-k lists are merged by raw score (ties: lower gallery id first) and positions are mapped back to ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from backfill._validation import check_int
from backfill.embeddings import Embeddings
from backfill.ordering import num_backfilled, resolve_exclude, validate_order
from backfill.strategies import Side, Space, Strategy, get_strategy

__all__ = ["BackfillIndex", "SearchResult"]


@dataclass(frozen=True)
class SearchResult:
    """Top-k hits per query.

    Parameters
    ----------
    ids : ndarray of shape (n_q, k), int64
        Gallery ids, best first; ``-1`` where fewer than k items are reachable.
    scores : ndarray of shape (n_q, k), float32
        Raw similarities; ``-inf`` for padding.
    spaces : ndarray of shape (n_q, k), uint8
        :class:`~backfill.strategies.Space` values: the space of the strategy side that scored each hit
        (``Space.OLD`` for padding).
    """

    ids: np.ndarray
    scores: np.ndarray
    spaces: np.ndarray

    def space(self, query: int, rank: int) -> Space:
        """The :class:`~backfill.strategies.Space` of hit ``rank`` (0-based) of query ``query``."""
        return Space(int(self.spaces[query, rank]))


class BackfillIndex:
    """Exact top-k search over ``gallery`` backfilled in ``order``.

    Parameters
    ----------
    gallery : Embeddings
        The gallery embeddings (any of old / new / transformed / bct; indexes are built lazily, one per
        gallery array a strategy uses).
    order : array-like of shape (gallery.n,)
        Backfill order, a permutation of ``0..gallery.n-1`` (``ValueError`` otherwise).
    """

    def __init__(self, gallery: Embeddings, order: np.ndarray) -> None:
        self.gallery = gallery
        self.order = validate_order(order, gallery.n)
        self._indexes: dict[str, faiss.IndexFlatIP] = {}

    @property
    def n(self) -> int:
        """Gallery size."""
        return self.gallery.n

    def _index(self, name: str) -> faiss.IndexFlatIP:
        if name not in self._indexes:
            data = np.ascontiguousarray(self.gallery.array(name)[self.order])
            index = faiss.IndexFlatIP(data.shape[1])
            index.add(data)
            self._indexes[name] = index
        return self._indexes[name]

    def _search_side(self, side: Side, queries: Embeddings, lo: int, hi: int, k: int):
        """Top-``k`` positions in ``[lo, hi)`` by ``side``: ``(scores, positions)``, positions -1 if none."""
        q, _ = side.arrays(queries, self.gallery)
        index = self._index(side.gallery)
        k_eff = min(k, hi - lo)
        params = faiss.SearchParameters(sel=faiss.IDSelectorRange(lo, hi))
        scores, pos = index.search(q, k_eff, params=params)
        return scores, pos

    def search(
        self,
        strategy: str | Strategy,
        queries: Embeddings,
        ratio: float,
        *,
        k: int = 10,
        exclude: np.ndarray | None = None,
    ) -> SearchResult:
        """Top-``k`` gallery items for each query under ``strategy`` at backfill ``ratio``.

        Parameters
        ----------
        strategy : str or Strategy
            Strategy name (see :mod:`backfill.strategies`) or :class:`~backfill.strategies.Strategy`.
        queries : Embeddings
            Query embeddings holding the query arrays the strategy needs (``ValueError`` names missing
            ones).
        ratio : float
            Backfill ratio in [0, 1].
        k : int, default=10
            Number of hits, >= 1.
        exclude : array-like of shape (n_q,), optional
            Gallery id to drop per query (``-1`` = none), e.g. the query's own item when queries are
            gallery items (leave-one-out).

        Returns
        -------
        SearchResult
            Equal to a brute-force ranking of the merged scores.
        """
        strat = get_strategy(strategy)
        k = check_int(k, "k")
        m = num_backfilled(ratio, self.n)
        queries.require(strat.query_arrays, purpose=f"strategy '{strat.name}' (queries)")
        self.gallery.require(strat.gallery_arrays, purpose=f"strategy '{strat.name}' (gallery)")
        ex = resolve_exclude(queries.n, self.n, exclude=exclude)
        want = k + 1 if (ex >= 0).any() else k  # one spare hit per query to survive the exclusion
        u_side, b_side = strat.sides(float(ratio))
        parts = []
        for side, lo, hi in ((b_side, 0, m), (u_side, m, self.n)):
            if side is None or hi <= lo:
                continue
            scores, pos = self._search_side(side, queries, lo, hi, want)
            parts.append((scores, pos, np.full(pos.shape, side.space, dtype=np.uint8)))
        n_q = queries.n
        if not parts:
            empty = np.full((n_q, k), -1, np.int64)
            return SearchResult(empty, np.full((n_q, k), -np.inf, np.float32), np.zeros((n_q, k), np.uint8))
        scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
        pos = np.concatenate([p[1] for p in parts], axis=1)
        spaces = np.concatenate([p[2] for p in parts], axis=1)
        ids = np.where(pos >= 0, self.order[np.maximum(pos, 0)], -1)
        drop = (pos < 0) | (ids == ex[:, None])
        scores = np.where(drop, -np.inf, scores)
        ids = np.where(drop, -1, ids)
        # Best score first; equal scores by increasing id; dropped entries (id -1, -inf) last.
        tie_key = np.where(drop, np.iinfo(np.int64).max, ids)
        rank = np.lexsort((tie_key, -scores.astype(np.float64)), axis=1)[:, :k]
        out_ids = np.take_along_axis(ids, rank, axis=1)
        out_scores = np.take_along_axis(scores, rank, axis=1)
        out_spaces = np.where(out_ids >= 0, np.take_along_axis(spaces, rank, axis=1), 0).astype(np.uint8)
        pad = k - out_ids.shape[1]
        if pad > 0:
            out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
            out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_spaces = np.pad(out_spaces, ((0, 0), (0, pad)))
        return SearchResult(out_ids.astype(np.int64), out_scores.astype(np.float32), out_spaces)
