"""What caps the full method's relative gain on a suite: its measured figures next to ceilings on the same split.

The full method searches the items not yet backfilled with psi(new query) in the old space, so before any
backfill it can do no better than the old gallery embeddings allow. This script measures, on a labelled split
(queries = gallery, leave-one-out, exact curves), split by the classes the old model saw and those it never saw:

- mAP of old/old, of the full method at 0% (psi of the new query against the old gallery), of new/new, and of
  a label oracle that queries the old gallery with the old-space centroid of the query's own class (one
  query vector that knows the answer: what the old gallery can give a single query);
- the relative gain of the full method with each backfill order, the random order's gain predicted by a
  straight line from its 0% to its 100% point (gain = ((full at 0% + full at 100%) / 2 - old/old) / (new/new -
  old/old); full at 100% is new/new without rho, above it with),
  two more deployable uncertainty scores of the old classifier (lowest top cosine, energy), a label oracle
  order that backfills every item of a class the old model never saw first, and, for each
  order, how well its first half picks out those items (ROC AUC of the order's rank);
- whether the merge is calibrated: the full method's gain (random order) when every old-space score is
  shifted by a constant c, and the best c for each group of queries on its own (a label oracle); and, on a
  subsample of queries, when each space's scores are replaced by the share of relevant pairs at that score
  (a monotone map per space, fitted with the labels of those same queries: a label oracle of calibration).

    python benchmarks/gain_bounds.py --suite pretrained/cifar100/homogeneous --data ../shared/data/cifar100

Needs the suite's psi_mc (``--variant full_rho``: psi_mc_rho and rho_mc); the backbone features come from the
feature cache (computed once otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from backfill.datasets import load_dataset
from backfill.embeddings import Embeddings
from backfill.evaluation import evaluate_curve
from backfill.methods import ORDERS, make_order
from backfill.metrics import average_precision, relative_gain
from backfill.ordering import class_centroids, order_by_score, random_order
from backfill.reproduce import order_inputs
from backfill.suite import ModelSuite


def rank_auc(order: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of "backfilled earlier" as a detector of ``positive`` items."""
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    return float(roc_auc_score(positive, -position))


def with_old_space_offset(bundle: Embeddings, c: float) -> tuple[Embeddings, Embeddings]:
    """(queries, gallery) on which ``rt_merge`` ranks by ``psi(q) . o + c`` (old space) and ``n_q . n``
    (new space), up to one positive factor per query: each space gets extra coordinates whose products add
    ``c`` to the old-space scores only (``k = 1 / (1 + |c|)`` keeps every row of unit length)."""
    k = 1.0 / (1.0 + abs(c))
    a, b = np.sqrt(k), np.sqrt(1.0 - k)
    ones, zeros = np.ones((bundle.n, 1), np.float32), np.zeros((bundle.n, 1), np.float32)
    transformed = np.hstack([a * bundle.transformed, b * ones])
    old = np.hstack([a * bundle.old, np.sign(c) * b * ones])
    queries = Embeddings(bundle.labels, old=old, new=np.hstack([a * bundle.new, b * ones, zeros]),
                         transformed=transformed)
    gallery = Embeddings(bundle.labels, old=old, new=np.hstack([a * bundle.new, zeros, b * ones]),
                         transformed=transformed)
    return queries, gallery


def relevance_calibration(scores: np.ndarray, relevant: np.ndarray, *,
                          bins: int = 400) -> Callable[[np.ndarray], np.ndarray]:
    """The monotone map score -> share of relevant pairs among ``scores`` (quantile bins, made non-decreasing);
    a tiny multiple of the score breaks ties within a bin as the raw score does."""
    edges = np.quantile(scores, np.linspace(0.0, 1.0, bins + 1))

    def bin_of(x: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)

    b = bin_of(scores)
    share = np.bincount(b, weights=relevant, minlength=bins) / np.maximum(np.bincount(b, minlength=bins), 1)
    share = np.maximum.accumulate(share)
    return lambda x: share[bin_of(x)] + 1e-9 * x


def calibrated_merge_gain(full: Embeddings, order: np.ndarray, *, queries: int, seed: int,
                          points: int = 11) -> tuple[float, float]:
    """Relative gain of ``rt_merge`` on ``queries`` sampled queries (leave-one-out, ``points`` ratios, the same
    random ``order``, old/old and new/new of the same queries): raw scores, and each space's scores through
    its :func:`relevance_calibration` (fitted on these queries' own pairs: a label oracle)."""
    q = np.random.default_rng(seed).choice(full.n, size=min(queries, full.n), replace=False)
    own = np.zeros((q.size, full.n), dtype=bool)
    own[np.arange(q.size), q] = True
    relevant = (full.labels[q][:, None] == full.labels[None, :]) & ~own
    scores = {"old": full.transformed[q] @ full.old.T, "new": full.new[q] @ full.new.T}
    calibrated = {space: relevance_calibration(s[~own], relevant[~own])(s) for space, s in scores.items()}

    def mean_ap(s: np.ndarray) -> float:
        return float(np.nanmean(average_precision(np.where(own, -np.inf, s), relevant)))

    old_map, new_map = mean_ap(full.old[q] @ full.old.T), mean_ap(scores["new"])
    position = np.empty(full.n, dtype=np.int64)
    position[order] = np.arange(full.n)
    gains = []
    for sides in (scores, calibrated):
        maps = [mean_ap(np.where((position < round(ratio * full.n))[None], sides["new"], sides["old"]))
                for ratio in np.linspace(0.0, 1.0, points)]
        gains.append(relative_gain(float(np.mean(maps)), old_map, new_map))
    return gains[0], gains[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", required=True, help="a suite directory with old, new and psi_mc")
    parser.add_argument("--data", default=None, help="dataset root (default: the dataset's usual place)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=["full", "full_rho"], default="full",
                        help="psi_mc, or psi_mc_rho with rho (new/new stays the new model's own)")
    parser.add_argument("--calibration-queries", type=int, default=1500,
                        help="queries sampled for the per-space calibration check (0: skip it)")
    args = parser.parse_args()

    suite = ModelSuite.load(args.suite)
    split = load_dataset(suite.dataset, args.split, root=args.data)
    variants = suite.embed(split.images, labels=split.labels, progress=True, whole_split=True)
    if args.variant not in variants:
        parser.error(f"{args.suite} has no {'psi_mc' if args.variant == 'full' else 'psi_mc_rho'}: "
                     f"the {args.variant} method cannot run")
    full = variants[args.variant]
    labels = full.labels
    n = full.n
    unseen = ~np.isin(labels, suite.old_classes)
    groups = {"classes the old model saw": ~unseen, "classes it never saw": unseen, "all": np.ones(n, bool)}

    def per_query(strategy: str, queries: Embeddings, order: np.ndarray, ratio: float) -> np.ndarray:
        return evaluate_curve(strategy, queries, full, order, points=[ratio], leave_one_out=True).ap[:, 0]

    random = random_order(n, seed=args.seed)
    classes, centroids = class_centroids(full.old, labels)  # label oracle: the old-space centre of each class
    oracle_queries = Embeddings(labels, centroids[np.searchsorted(classes, labels)], full.new)
    rows = {
        "old/old": per_query("old", full, random, 0.0),
        "full at 0% (psi(new query) vs old gallery)": per_query("rt_merge", full, random, 0.0),
        "class-centroid query vs old gallery (label oracle)": per_query("old", oracle_queries, random, 0.0),
        "new/new": evaluate_curve("new", variants["base"], variants["base"], random, points=[1.0],
                                  leave_one_out=True).ap[:, 0],
    }
    print(f"\n{args.suite}, {suite.dataset} {args.split} ({n} images; {int(unseen.sum())} of classes the old "
          "model never saw): mAP %, leave-one-out")
    print(f"| | {' | '.join(groups)} |\n|---|{'---|' * len(groups)}")
    for name, ap in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * np.nanmean(ap[mask]):.1f}" for mask in groups.values()) + " |")

    old_map, new_map = np.nanmean(rows["old/old"]), np.nanmean(rows["new/new"])
    at_zero = np.nanmean(rows["full at 0% (psi(new query) vs old gallery)"])
    inputs = order_inputs(suite, args.data, args.seed)
    orders = {f"{o.name}{'' if o.deployable else ' (not deployable)'}":
              make_order(o.name, full, suite=suite, seed=args.seed, **inputs) for o in ORDERS}
    # Two other deployable uncertainty scores of the old classifier (the old_entropy order uses its entropy).
    logits = full.old.astype(np.float64) @ suite.old.logit_layer().weight.double().numpy().T
    orders["max old-class cosine, lowest first"] = order_by_score(-logits.max(axis=1))
    orders["energy (-logsumexp of the logits), highest first"] = order_by_score(
        -np.logaddexp.reduce(logits, axis=1))
    tiebreak = np.random.default_rng(args.seed).random(n)
    orders["never-seen classes first (label oracle)"] = order_by_score(unseen + 0.5 * tiebreak)
    print(f"\nFull method (rt_merge on {args.variant}), relative gain; old/old {100 * old_map:.1f}, new/new "
          f"{100 * new_map:.1f}, full at 0% {100 * at_zero:.1f}")
    print("| backfill order | rel. gain | ROC AUC: never-seen classes early |\n|---|---|---|")
    at_end = np.nanmean(per_query("rt_merge", full, random, 1.0))  # new/new, or rho's end above it
    line = ((at_zero + at_end) / 2 - old_map) / (new_map - old_map)
    print(f"| random, straight line from 0% to 100% (prediction) | {100 * line:.1f}% | - |")
    for name, order in orders.items():
        curve = evaluate_curve("rt_merge", full, full, order, leave_one_out=True)
        gain = relative_gain(float(curve.map.mean()), old_map, new_map)
        print(f"| {name} | {100 * gain:.1f}% | {rank_auc(order, unseen):.3f} |")

    # A query's ranking depends on its own offset only, so one curve per offset gives every group's figure.
    offsets = (-0.1, -0.05, 0.0, 0.05, 0.1)
    auc = {}  # offset -> per-query AUC-mAP
    for c in offsets:
        queries, gallery = with_old_space_offset(full, c)
        auc[c] = evaluate_curve("rt_merge", queries, gallery, random, leave_one_out=True).ap.mean(axis=1)
    print("\nFull method, random order, old-space scores shifted by c (relative gain; AUC-mAP % per group)")
    print(f"| c | rel. gain | {' | '.join(groups)} |\n|---|---|{'---|' * len(groups)}")
    for c in offsets:
        gain = relative_gain(float(np.nanmean(auc[c])), old_map, new_map)
        print(f"| {c:+.2f} | {100 * gain:.1f}% | "
              + " | ".join(f"{100 * np.nanmean(auc[c][mask]):.1f}" for mask in groups.values()) + " |")
    best = {name: max(offsets, key=lambda c, m=mask: np.nanmean(auc[c][m])) for name, mask in groups.items()}
    per_group = np.where(unseen, auc[best["classes it never saw"]], auc[best["classes the old model saw"]])
    print(f"| best c per group (saw {best['classes the old model saw']:+.2f}, never saw "
          f"{best['classes it never saw']:+.2f}; label oracle) | "
          f"{100 * relative_gain(float(np.nanmean(per_group)), old_map, new_map):.1f}% | - | - | - |")

    if args.calibration_queries:
        raw, calibrated = calibrated_merge_gain(full, random, queries=args.calibration_queries, seed=args.seed)
        print(f"\nFull method, random order, {min(args.calibration_queries, n)} sampled queries, 11 points: "
              f"raw scores {100 * raw:.1f}%, each space's scores mapped to the share of relevant pairs at that "
              f"score (label oracle) {100 * calibrated:.1f}%")


if __name__ == "__main__":
    main()
