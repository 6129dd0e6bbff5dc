"""Speed of the fast backfill-curve evaluator against the straightforward one.

    python benchmarks/curve_speed.py [--n 10000] [--dim 128] [--classes 100] [--subsample 50]

Synthetic clustered embeddings (class centres plus Gaussian noise; the new model's clusters are tighter than
the old model's). Queries = gallery (leave-one-out), random order, 21 points, strategy ``rank_merge``. Prints
the seconds of the fast evaluator on all queries and of the reference evaluator (merged score matrix rebuilt
at every point, scikit-learn's ``average_precision_score`` per query per point) on a query subsample, the
per-query speed ratio, and checks that both agree on the subsample. Wall-clock and process CPU seconds are
both printed: on a shared machine the CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backfill.embeddings import Embeddings
from backfill.evaluation import curve_points, evaluate_curve
from backfill.ordering import random_order
from backfill.testing import reference_curve


def synthetic(n: int, dim: int, n_classes: int, seed: int = 0) -> Embeddings:
    """Clustered embeddings: ``old`` noisier than ``new``; ``transformed`` = a noisy copy of ``new`` in the
    old space (same dimension here)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    old = rng.normal(size=(n_classes, dim))[labels] + 2.5 * rng.normal(size=(n, dim))
    new = rng.normal(size=(n_classes, dim))[labels] + 1.8 * rng.normal(size=(n, dim))
    return Embeddings(labels, old=old, new=new, transformed=old + 0.5 * rng.normal(size=(n, dim)))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="gallery size = number of queries")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--subsample", type=int, default=50, help="queries for the reference evaluator")
    parser.add_argument("--strategy", default="rank_merge")
    args = parser.parse_args()

    emb = synthetic(args.n, args.dim, args.classes)
    order = random_order(args.n, seed=0)
    pts = curve_points(21)
    fast, fast_wall, fast_cpu = _timed(
        lambda: evaluate_curve(args.strategy, emb, emb, order, points=pts, leave_one_out=True)
    )
    print(f"fast evaluator: {args.n} queries x {args.n} gallery, d={args.dim}, {pts.size} points,"
          f" {args.strategy}: {fast_wall:.2f} s wall, {fast_cpu:.2f} s CPU")
    print(f"  mAP at p=0, 0.5, 1: {fast.map[0]:.4f} {fast.map[10]:.4f} {fast.map[-1]:.4f};"
          f" top-1 {fast.top1[0]:.4f} -> {fast.top1[-1]:.4f}")

    sub = np.random.default_rng(1).choice(args.n, size=args.subsample, replace=False)
    ref, ref_wall, ref_cpu = _timed(
        lambda: reference_curve(args.strategy, emb.subset(sub), emb, order, points=pts, exclude=sub)
    )
    print(f"reference evaluator: {args.subsample} queries: {ref_wall:.2f} s wall, {ref_cpu:.2f} s CPU")
    per_fast, per_ref = fast_wall / args.n, ref_wall / args.subsample
    cpu_ratio = (ref_cpu / args.subsample) / (fast_cpu / args.n)
    print(f"per query: fast {1e3 * per_fast:.3f} ms, reference {1e3 * per_ref:.1f} ms,"
          f" speed ratio {per_ref / per_fast:.0f}x (wall; CPU: {cpu_ratio:.0f}x)")
    ap_diff = float(np.nanmax(np.abs(fast.ap[sub] - ref.ap)))
    same_hits = bool((fast.hit1[sub] == ref.hit1).all() and (fast.hit5[sub] == ref.hit5).all())
    print(f"agreement on the subsample: max |AP difference| = {ap_diff:.2e},"
          f" top-1/top-5 identical: {same_hits}")
    if ap_diff > 1e-9 or not same_hits:
        raise SystemExit("fast and reference evaluators disagree")


if __name__ == "__main__":
    main()
