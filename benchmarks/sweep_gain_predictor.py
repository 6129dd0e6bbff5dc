"""How the ``predicted_gain`` order's defaults were chosen: its relative gain on a shipped suite, per arm.

Each arm fits :func:`backfill.gain_prediction.fit_gain_predictor` on some views of the train split (old and new
embeddings, labels) and orders the test split's gallery by the predicted gain; the score is the relative gain of
the suite's best full method (``full_rho``, else ``full``) with that order (queries = gallery, leave-one-out,
21 points), next to the old classifier's entropy order and the oracle on the same curves.

    python benchmarks/sweep_gain_predictor.py --suite pretrained/cifar100/homogeneous --data ../shared/data/cifar100

The backbone features of the views come from the feature cache (``pretrained/train.sh`` computes them).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from backfill.datasets import load_dataset
from backfill.evaluation import evaluate_curve
from backfill.gain_prediction import fit_gain_predictor
from backfill.inference import embed_dataset
from backfill.metrics import relative_gain
from backfill.ordering import oracle_priority, order_by_score
from backfill.suite import ModelSuite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", required=True, help="a suite directory with old, new and psi_mc(_rho)")
    parser.add_argument("--data", default=None, help="dataset root (default: the dataset's usual place)")
    args = parser.parse_args()

    suite = ModelSuite.load(args.suite)
    test = load_dataset(suite.dataset, "test", root=args.data)
    train = load_dataset(suite.dataset, "train", root=args.data)
    variants = suite.embed(test.images, labels=test.labels, progress=True, whole_split=True)
    base, name = variants["base"], "full_rho" if "full_rho" in variants else "full"
    full = variants[name]
    identity = np.arange(base.n)
    old_map = float(evaluate_curve("old", base, base, identity, points=[0.0], leave_one_out=True).map.mean())
    new_map = float(evaluate_curve("new", base, base, identity, points=[1.0], leave_one_out=True).map.mean())

    def gain(priority: np.ndarray) -> float:
        curve = evaluate_curve("rt_merge", full, full, order_by_score(priority), leave_one_out=True)
        return relative_gain(float(curve.map.mean()), old_map, new_map)

    embedded = {view: (embed_dataset(suite.old, train.images, suite.dataset, view=view).numpy(),
                       embed_dataset(suite.new, train.images, suite.dataset, view=view).numpy())
                for view in ("clean", "flip", "crop")}

    def rows(*views: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate([embedded[v][0] for v in views]), np.concatenate([embedded[v][1] for v in views]),
                np.tile(train.labels, len(views)))

    def standardised(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / x.std()

    def fitted(*views: str, **options) -> Callable[[], np.ndarray]:
        return lambda: fit_gain_predictor(*rows(*views), **options).priority(full.old)

    arms: dict[str, Callable[[], np.ndarray]] = {
        "old_entropy (reference)": lambda: suite.old_entropy_priority(full.old),
        "clean train images": fitted("clean"),
        "mirrored": fitted("flip"),
        "mirrored + cropped (the default)": fitted("flip", "crop"),
        "clean + mirrored + cropped": fitted("clean", "flip", "crop"),
        "mirrored + cropped, 10 epochs": fitted("flip", "crop", epochs=10),
        "mirrored + cropped, 40 epochs": fitted("flip", "crop", epochs=40),
        "mirrored + cropped, hidden 1024": fitted("flip", "crop", hidden=1024),
        "mirrored + cropped, mean of 5 seeds": lambda: sum(
            standardised(fit_gain_predictor(*rows("flip", "crop"), seed=s).priority(full.old)) for s in range(5)),
        "oracle (labels and new embeddings of the gallery)": lambda: oracle_priority(full.old, full.new, full.labels),
    }
    print(f"\n{args.suite}: {name}, random order {100 * gain(np.random.default_rng(0).random(base.n)):.1f}%")
    print("| arm | rel. gain | seconds |\n|---|---|---|")
    for arm, priority in arms.items():
        start = time.perf_counter()
        scores = priority()
        seconds = time.perf_counter() - start  # fitting and scoring, not the curve
        print(f"| {arm} | {100 * gain(scores):.1f}% | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
