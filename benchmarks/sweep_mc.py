"""Sweep of the metric-compatible loss options (temperature, hard negatives, regression term, denominator).

How the defaults of ``backfill.transform_training.TransformConfig`` were chosen (table in
benchmarks/README.md). The old and new models embed the **train**
split once; a seeded 10% of every class is held out as a query set = gallery; psi (and rho) are trained on
the other 90% and scored on the held-out part by the engine's exact ``rt_merge`` curve (random backfill
order, leave-one-out): AUC-mAP over 21 ratios, mAP at 0% (transformed queries against the old gallery) and
at 100% (new/new, or rho/rho), and the relative gain. The test split is never looked at.

    python benchmarks/sweep_mc.py --old OLD.pt --new NEW.pt --dataset cifar100 \\
        --data /work/shared/data/cifar100 --cache /tmp/feats.npz --json sweep.json [--grid quick|full]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

from backfill.checkpoints import load_checkpoint
from backfill.datasets import load_dataset
from backfill.embeddings import Embeddings
from backfill.evaluation import evaluate_curve
from backfill.metrics import area_under_curve, relative_gain
from backfill.ordering import random_order
from backfill.transform_training import TransformConfig, cached_features, fit_transform


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out): a seeded ``fraction`` of every class is held out."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[: max(1, round(fraction * len(idx)))])
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.concatenate(held)] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def score(psi, rho, old: np.ndarray, new: np.ndarray, labels: np.ndarray, order: np.ndarray) -> dict:
    """rt_merge curve of psi (and rho) on held-out features, with the old/old and new/new references."""
    with torch.no_grad():
        q_new = torch.from_numpy(new)
        if rho is not None:
            q_new = rho(q_new)
        transformed = psi(q_new).numpy()
    emb = Embeddings(labels, old, q_new.numpy(), transformed=transformed)
    curve = evaluate_curve("rt_merge", emb, emb, order, leave_one_out=True)
    old_map = float(evaluate_curve("old", emb, emb, order, points=[0.0], leave_one_out=True).map[0])
    plain = Embeddings(labels, old, new)
    new_map = float(evaluate_curve("new", plain, plain, order, points=[1.0], leave_one_out=True).map[0])
    auc = area_under_curve(curve.map)
    return {"auc_map": auc, "map_at_0": float(curve.map[0]), "map_at_100": float(curve.map[-1]),
            "old_map": old_map, "new_map": new_map, "relative_gain": relative_gain(auc, old_map, new_map)}


def grid(name: str) -> list[dict]:
    configs: list[dict] = [{"loss": "regression"}]
    if name == "quick":
        temps, hards, weights = (0.02, 0.05, 0.1, 0.2), (None,), (1.0,)
    else:
        temps, hards, weights = (0.02, 0.05, 0.1, 0.2), (None, 64), (0.0, 1.0)
    for t, h, w in itertools.product(temps, hards, weights):
        configs.append({"loss": "mc", "temperature": t, "hard_negatives": h, "regression_weight": w})
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--cache", default=None, help="feature cache .npz")
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--augmented-copies", type=int, default=0, help="randomly augmented copies per image")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--grid", default="quick", help="quick, full, or a JSON list of configs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: best on a busy CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    old_model, old_card = load_checkpoint(args.old, expect={"kind": "old"})
    new_model, new_card = load_checkpoint(args.new, expect={"kind": ("new", "bct")})
    train = load_dataset(args.dataset, "train", args.data)
    old, new, labels = cached_features(old_model, old_card, new_model, new_card, train,
                                       augmented_copies=args.augmented_copies, cache=args.cache)
    n = len(train)
    fit_idx, val_idx = holdout_split(labels[:n], args.holdout, args.seed)
    # Rows v * n + i are copy v of image i (0: clean): train on every copy of the kept images, score clean ones.
    fit_idx = np.concatenate([fit_idx + v * n for v in range(1 + args.augmented_copies)])
    order = random_order(len(val_idx), seed=args.seed)
    configs = grid(args.grid) if args.grid in ("quick", "full") else json.loads(args.grid)
    rows = []
    for config in configs:
        t0 = time.perf_counter()
        options = {"epochs": args.epochs, **config, "seed": args.seed}
        psi, rho, history = fit_transform(old[fit_idx], new[fit_idx], labels[fit_idx], TransformConfig(**options),
                                          progress=False)
        result = score(psi, rho, old[val_idx], new[val_idx], labels[val_idx], order)
        row = {**config, **result, "final_loss": history[-1]["loss"], "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"old": args.old, "new": args.new, "dataset": args.dataset, "holdout": args.holdout,
                       "views": args.views, "epochs": args.epochs, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
