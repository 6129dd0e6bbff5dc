"""The vocabulary of the comparison: the methods and the backfill orders, one table each.

The CLI, ``backfill reproduce``, the app and the docs all read these tables, so a method or an order has
one name, one label and one description everywhere.

A :class:`Method` runs an engine strategy (:mod:`backfill.strategies`) on one embedding *variant* of a model
suite (a key of ``ModelSuite.embed``: ``base``, ``full``, ``full_rho``) and needs some of the suite's models
per query. An :class:`Order` says which gallery items are backfilled first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backfill.embeddings import Embeddings
from backfill.ordering import nearest_centroid_priority, oracle_priority, order_by_score, random_order

__all__ = ["Method", "METHODS", "VARIANTS", "get_method", "Order", "ORDERS", "ORDER_ALIASES", "get_order",
           "make_order"]


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes
    ----------
    name : identifier used by the CLI, the JSON results and the app.
    label, short_label : display names (tables and legends / tight spaces).
    strategy : the engine strategy it runs.
    variant : the suite's embedding variant it runs on.
    query_models : the suite's models one query goes through (its per-query cost).
    description : one or two sentences for people (the app's "How it works").
    """

    name: str
    label: str
    short_label: str
    strategy: str
    variant: str
    query_models: tuple[str, ...]
    description: str


#: The methods, in display order.
METHODS: tuple[Method, ...] = (
    Method("old", "old/old", "old/old", "old", "base", ("old",),
           "No upgrade: the old model answers every query from the old gallery embeddings. The floor."),
    Method("offline", "offline (switch at 100%)", "offline", "offline", "base", ("old",),
           "Keep the old model until the whole gallery is re-embedded, then switch: no gain until the end."),
    Method("new_partial", "naive (new-partial)", "naive", "new_partial", "base", ("new",),
           "Query with the new model and search only the re-embedded part: right at 100%, blind to most of "
           "the gallery before."),
    Method("bct", "BCT", "BCT", "bct", "base", ("bct",),
           "Backward-compatible training: the new model is trained to embed into the old space, so old and new "
           "embeddings are searched together; it needs a specially trained new model and is capped by the old "
           "space."),
    Method("rank_merge", "rank merge", "rank merge", "rank_merge", "base", ("old", "new"),
           "Query with both models (two forward passes), search the old part with the old query and the new "
           "part with the new query, merge by score. Training-free, but the two spaces' scores are not on one "
           "scale."),
    Method("rt_merge", "RT merge (regression ψ)", "RT merge", "rt_merge", "base", ("new", "psi_regression"),
           "A small network ψ, trained by regression, maps the new query into the old space: one new-model "
           "pass serves both parts and the old model can be retired on day one."),
    Method("full", "full (metric-compatible ψ)", "full", "rt_merge", "full", ("new", "psi_mc"),
           "The paper's method: ψ trained with the metric-compatible contrastive loss, whose one denominator "
           "pools both spaces' negatives, so the merged ranking is calibrated. One new-model pass per query."),
    Method("full_rho", "full + ρ", "full + ρ", "rt_merge", "full_rho", ("new", "rho_mc", "psi_mc_rho"),
           "The full method with a small head ρ on the frozen new model, trained jointly with ψ so that the "
           "new space also adapts; it ends above new/new."),
)

VARIANTS = ("base", "full", "full_rho")


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``."""
    for method in METHODS:
        if method.name == name:
            return method
    raise ValueError(f"unknown method {name!r}; expected one of {[m.name for m in METHODS]}")


@dataclass(frozen=True)
class Order:
    """A backfill order. ``deployable``: computable by a running service (from stored old embeddings and the
    models only, before any new embedding of the gallery); ``needs_training_data``: it also needs the training
    images (the old model's for ``old_centroid``). ``predicted_gain`` needs them only to fit its predictor, which
    a suite ships (``gain_predictor.pt``)."""

    name: str
    label: str
    deployable: bool
    needs_training_data: bool
    description: str


ORDERS: tuple[Order, ...] = (
    Order("random", "random (the paper's)", True, False, "A seeded random permutation of the gallery."),
    Order("old_entropy", "deployable: old model's uncertainty first", True, False,
          "Items whose stored old embedding the old classifier is least sure about go first (entropy of its "
          "softmax): they gain most from the new model."),
    Order("old_centroid", "deployable: far from the old classes first", True, True,
          "Items far from every old-class centroid (old space, from the old model's training images) go first."),
    Order("predicted_gain", "deployable: largest predicted gain first", True, False,
          "Items for which a small network, fitted on training images where both models and the labels are "
          "known (the suite's gain_predictor.pt), predicts from the stored old embedding the largest gain from "
          "the new model go first."),
    Order("oracle", "oracle (peeks at new embeddings; reference only)", False, False,
          "Items whose old embedding ranks worst against their new one go first: uses labels and new "
          "embeddings, an upper bound only."),
)


#: Earlier names of orders, still accepted (the app called old_entropy "deployable").
ORDER_ALIASES: dict[str, str] = {"deployable": "old_entropy"}


def get_order(name: str) -> Order:
    """The :class:`Order` called ``name`` (or one of its :data:`ORDER_ALIASES`)."""
    name = ORDER_ALIASES.get(name, name)
    for order in ORDERS:
        if order.name == name:
            return order
    raise ValueError(f"unknown backfill order {name!r}; expected one of {[o.name for o in ORDERS]}")


def make_order(name: str, gallery: Embeddings, *, suite=None, seed: int = 0,
               old_centroids: np.ndarray | None = None,
               gain_predictor: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The backfill order ``name`` of ``gallery`` as an int64 permutation ``(N,)``.

    ``suite`` (its old classifier) is needed by ``old_entropy``; ``old_centroids`` ``(C, d_old)`` by
    ``old_centroid``; ``gain_predictor`` (old embeddings ``(N, d_old)`` -> priorities ``(N,)``, e.g.
    :meth:`backfill.gain_prediction.GainPredictor.priority`; default: the suite's ``gain_predictor``) by
    ``predicted_gain``; ``oracle`` reads ``gallery.labels`` and ``gallery.new``.
    """
    name = get_order(name).name
    if name == "random":
        return random_order(gallery.n, seed=seed)
    if name == "old_entropy":
        if suite is None:
            raise ValueError("the old_entropy order needs the suite's old model")
        return order_by_score(suite.old_entropy_priority(gallery.old))
    if name == "old_centroid":
        if old_centroids is None:
            raise ValueError("the old_centroid order needs old-class centroids (from training images)")
        return order_by_score(nearest_centroid_priority(gallery.old, old_centroids))
    if name == "predicted_gain":
        if gain_predictor is None and getattr(suite, "gain_predictor", None) is not None:
            gain_predictor = suite.gain_predictor.priority
        if gain_predictor is None:
            raise ValueError("the predicted_gain order needs a gain predictor: the suite has no gain_predictor.pt "
                             "(`backfill train gain-predictor` fits one)")
        return order_by_score(gain_predictor(gallery.old))
    return order_by_score(oracle_priority(gallery.old, gallery.new, gallery.labels))
