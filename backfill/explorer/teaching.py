"""Teaching data for the "How it works" section: the two embedding spaces, and how comparable their scores are.

:func:`projection` places the same gallery images in the old and the new space (2-D PCA of each);
:func:`score_distributions` gives, per merge method, the scores of same-class and other-class pairs in both
spaces as a :class:`ScorePanel`, and :func:`cross_space_order` summarises a panel in one number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backfill.explorer.session import Explorer

__all__ = ["Projection", "ScorePanel", "cross_space_order", "projection", "score_distributions"]


@dataclass(frozen=True)
class Projection:
    """The same images in both spaces: ``old_xy``/``new_xy`` ``(n, 2)``, their ``labels`` ``(n,)`` and the
    class ids the old model was trained on (``seen``)."""

    old_xy: np.ndarray
    new_xy: np.ndarray
    labels: np.ndarray
    seen: np.ndarray


@dataclass(frozen=True)
class ScorePanel:
    """Similarity scores of one merge method, 1-D float32 each.

    ``old_pos``/``old_neg``: same-class / other-class pairs in the old space, scored with the query the
    method sends there; ``new_pos``/``new_neg``: the same in the new space (new query x new gallery).
    """

    method: str
    query: str
    old_pos: np.ndarray
    old_neg: np.ndarray
    new_pos: np.ndarray
    new_neg: np.ndarray


# The merge methods whose old-space query differs: (method, embedding variant, query array, what it is).
_PANELS = (("rank_merge", "base", "old", "old query"),
           ("rt_merge", "base", "transformed", "regression ψ"),
           ("full", "full", "transformed", "metric-compatible ψ"))


def projection(session: Explorer, classes: Sequence[int] | None = None, per_class: int = 150,
               seed: int = 0) -> Projection:
    """2-D PCA projections of the same gallery images in the old and in the new space.

    ``classes`` default to two classes the old model saw and two it never saw. Each space gets its own
    PCA: the two spaces are unrelated coordinate systems.
    """
    base = session.embeddings()["base"]
    labels = base.labels
    seen = np.asarray(getattr(session.suite, "old_classes", None) or [], dtype=np.int64)
    if classes is None:
        present = np.unique(labels)
        classes = [*np.intersect1d(present, seen)[:2], *np.setdiff1d(present, seen)[:2]]
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    return Projection(_pca2(base.old[picked]), _pca2(base.new[picked]), labels[picked], seen)


def score_distributions(session: Explorer, n_queries: int = 300, seed: int = 0) -> list[ScorePanel]:
    """One :class:`ScorePanel` per merge method the suite can run (rank merge, RT merge, full).

    ``n_queries`` random gallery images are queries against the whole gallery (self-pairs dropped); at most
    20,000 scores per series are kept.
    """
    embeddings = session.embeddings()
    labels = embeddings["base"].labels
    rng = np.random.default_rng(seed)
    q = rng.choice(len(labels), size=min(n_queries, len(labels)), replace=False)
    same = labels[q][:, None] == labels[None, :]
    not_self = np.ones_like(same)
    not_self[np.arange(len(q)), q] = False
    panels = []
    for method, variant, query_array, query in _PANELS:
        emb = embeddings.get(variant)
        if emb is None or query_array not in emb.available:
            continue
        old_scores = emb.array(query_array)[q] @ emb.old.T
        new_scores = emb.new[q] @ emb.new.T
        panels.append(ScorePanel(method, query, _sample(old_scores[same & not_self], rng),
                                 _sample(old_scores[~same], rng), _sample(new_scores[same & not_self], rng),
                                 _sample(new_scores[~same], rng)))
    return panels


def cross_space_order(panel: ScorePanel) -> float:
    """How well one score scale serves both spaces.

    The probability that a same-class pair scored in one space outscores an other-class pair scored in the
    *other* space, averaged over the two directions. 1.0: a merged ranking never puts a cross-space negative
    first; 0.5: chance.
    """
    def above(positives: np.ndarray, negatives: np.ndarray) -> float:
        # Share of (positive, negative) pairs with positive > negative (ties count half), by sorting.
        negatives = np.sort(negatives)
        below = np.searchsorted(negatives, positives, side="left")
        ties = np.searchsorted(negatives, positives, side="right") - below
        return float((below + 0.5 * ties).mean() / len(negatives))

    return 0.5 * (above(panel.old_pos, panel.new_neg) + above(panel.new_pos, panel.old_neg))


def _pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components of ``x`` ``(n, d)``, float32 ``(n, 2)``."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.ascontiguousarray(centred @ vt[:2].T, dtype=np.float32)


def _sample(values: np.ndarray, rng: np.random.Generator, limit: int = 20_000) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32).ravel()
    return values if values.size <= limit else rng.choice(values, size=limit, replace=False)
