"""Held-out sweep of head-training options against the training-free rank merge (CIFAR-100, homogeneous).

Rank merge compares raw cosine scores across the two spaces, so how each head spreads its scores decides how
much of the new model's gain it passes on. This script trains old (classes 0-49) and new (all classes) heads
on cached Lite0 features of 400 train images per class and scores, on the other 100 per class of the train
split (queries = gallery, leave-one-out, 21 points, random order): old/old and new/new AUC-mAP, rank merge's
relative gain, and the other-class score percentiles of both spaces. The test split plays no part.

    python benchmarks/sweep_merge.py --data ../shared/data/cifar100 [--grid '[{"logit_scale": 8}]']

``--psi-grid '[{"loss": "mc"}, ...]'`` also trains psi (``TransformConfig`` options) for each head row on the
embeddings of the heads' own 400 images per class and scores the full method (``rt_merge``) on the other 100:
images that neither the heads nor psi saw, unlike ``sweep_mc.py``, whose held-out images the heads trained on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

from backfill.backbones import dataset_features
from backfill.datasets import load_dataset, per_class_indices
from backfill.embeddings import Embeddings
from backfill.evaluation import evaluate_curve
from backfill.metrics import relative_gain
from backfill.ordering import random_order
from backfill.transform_training import TransformConfig, fit_transform


def _sibling(name: str):
    """Another script of this folder as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep_heads, sweep_mc = _sibling("sweep_heads"), _sibling("sweep_mc")

DEFAULT = dict(epochs=60, lr=2e-3, weight_decay=1e-4, hidden=512, label_smoothing=0.1, logit_scale=16.0)
GRID = [{}, {"logit_scale": 8.0}, {"logit_scale": 32.0}, {"label_smoothing": 0.0}, {"epochs": 15},
        {"weight_decay": 5e-2}]


def embed(model, feats: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.forward_features(torch.from_numpy(feats))[0].numpy()


def negative_percentiles(emb: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Mean and 99th percentile of cosine scores between images of different classes (2,000-image sample)."""
    pick = rng.choice(len(labels), 2000, replace=False)
    scores = emb[pick] @ emb[pick].T
    other = labels[pick][:, None] != labels[pick][None, :]
    return float(scores[other].mean()), float(np.percentile(scores[other], 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--grid", default=None, help="JSON list of overrides of the default head options")
    p.add_argument("--psi-grid", default=None, help="JSON list of TransformConfig options to score per head row")
    args = p.parse_args()
    torch.set_num_threads(2)
    grid = json.loads(args.grid) if args.grid else GRID
    ds = load_dataset("cifar100", "train", args.data)
    feats = dataset_features("efficientnet_lite0", ds.images)
    val = per_class_indices(ds.labels, 100, seed=1)
    fit = np.setdiff1d(np.arange(len(ds.labels)), val)
    fit_old = fit[ds.labels[fit] < 50]
    y_val = ds.labels[val]
    order = random_order(len(val), seed=0)
    print(f"{'overrides':<40} {'old/old':>8} {'new/new':>8} {'rank gain':>9} {'old neg mean/p99':>17} "
          f"{'new neg mean/p99':>17} {'seconds':>8}", flush=True)
    for overrides in grid:
        cfg = {**DEFAULT, **overrides}
        t = time.perf_counter()
        heads, fitted = {}, {}
        for kind, rows, classes in (("old", fit_old, 50), ("new", fit, 100)):
            x = torch.from_numpy(feats[rows][None])
            y = torch.from_numpy(ds.labels[rows]).long()
            model = sweep_heads.train(x, y, classes, backbone="efficientnet_lite0", **cfg)
            heads[kind], fitted[kind] = embed(model, feats[val]), embed(model, feats[fit])
        bundle = Embeddings(y_val, heads["old"], heads["new"])
        auc = {s: float(evaluate_curve(s, bundle, bundle, order, leave_one_out=True).map.mean())
               for s in ("old", "new", "rank_merge")}
        rng = np.random.default_rng(0)
        old_neg = negative_percentiles(heads["old"], y_val, rng)
        new_neg = negative_percentiles(heads["new"], y_val, rng)
        gain = relative_gain(auc["rank_merge"], auc["old"], auc["new"])
        print(f"{json.dumps(overrides):<40} {auc['old']:8.4f} {auc['new']:8.4f} {gain:9.3f} "
              f"{old_neg[0]:8.3f}/{old_neg[1]:.3f} {new_neg[0]:8.3f}/{new_neg[1]:.3f} "
              f"{time.perf_counter() - t:8.1f}", flush=True)
        for options in json.loads(args.psi_grid) if args.psi_grid else []:
            t = time.perf_counter()
            psi, rho, _ = fit_transform(fitted["old"], fitted["new"], ds.labels[fit], TransformConfig(**options),
                                        progress=False)
            r = sweep_mc.score(psi, rho, heads["old"], heads["new"], y_val, order)
            print(f"    psi {json.dumps(options)}: full gain {r['relative_gain']:.3f}, mAP at 0 / 100% "
                  f"{r['map_at_0']:.4f} / {r['map_at_100']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

if __name__ == "__main__":
    main()
