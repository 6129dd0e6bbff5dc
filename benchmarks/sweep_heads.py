"""Held-out sweep behind the head-training defaults (``backfill.head_training.HeadConfig``).

Trains old-model heads (classes 0-49) on cached EfficientNet-Lite features of 400 train images per class and
measures top-1 accuracy and mAP (queries = gallery, leave-one-out) on the other 100 train images per class,
so the test split plays no part in the choice. Prints one row per configuration.

    python benchmarks/sweep_heads.py --data ../shared/data/cifar100 [--backbone efficientnet_lite0] [--flip]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from backfill.backbones import PretrainedNet, dataset_features
from backfill.datasets import load_dataset, per_class_indices
from backfill.embeddings import Embeddings
from backfill.evaluation import evaluate_curve
from backfill.ordering import random_order


def train(x: torch.Tensor, y: torch.Tensor, classes: int, *, epochs: int, lr: float, weight_decay: float,
          hidden: int, backbone: str, seed: int = 0, label_smoothing: float = 0.1,
          logit_scale: float = 16.0) -> PretrainedNet:
    torch.manual_seed(seed)
    model = PretrainedNet(backbone, hidden=hidden, embedding_dim=128, num_classes=classes, logit_scale=logit_scale)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = len(y) // 256
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        view = torch.randint(0, x.shape[0], (len(y),), generator=gen)
        for s in range(steps):
            idx = perm[s * 256:(s + 1) * 256]
            _, logits = model.forward_features(x[view[idx], idx])
            loss = F.cross_entropy(logits, y[idx], label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--flip", action="store_true", help="also compare training with the flipped view")
    args = p.parse_args()
    torch.set_num_threads(2)
    ds = load_dataset("cifar100", "train", args.data)
    clean = dataset_features(args.backbone, ds.images)
    views = {"clean": clean[None]}
    if args.flip:
        views["clean+flip"] = np.stack([clean, dataset_features(args.backbone, ds.images, view="flip")])
    old = np.flatnonzero(ds.labels < 50)
    val = old[per_class_indices(ds.labels[old], 100, seed=1)]
    fit = np.setdiff1d(old, val)
    y_fit, y_val = torch.from_numpy(ds.labels[fit]).long(), ds.labels[val]
    configs = [dict(epochs=30, lr=2e-3, weight_decay=1e-4, hidden=512),
               dict(epochs=60, lr=2e-3, weight_decay=1e-4, hidden=512),
               dict(epochs=30, lr=1e-3, weight_decay=1e-4, hidden=512),
               dict(epochs=30, lr=2e-3, weight_decay=5e-2, hidden=512),
               dict(epochs=30, lr=2e-3, weight_decay=1e-4, hidden=1024)]
    print(f"{'view':<11} {'config':<55} {'val acc':>8} {'val mAP':>8} {'seconds':>8}")
    for view, feats in views.items():
        x = torch.from_numpy(feats[:, fit])
        for cfg in configs if view == "clean" else configs[:1]:
            t = time.perf_counter()
            model = train(x, y_fit, 50, backbone=args.backbone, **cfg)
            with torch.no_grad():
                emb, logits = model.forward_features(torch.from_numpy(clean[val]))
            acc = float((logits.argmax(1).numpy() == y_val).mean())
            e = emb.numpy()
            bundle = Embeddings(y_val, e, e)
            curve = evaluate_curve("old", bundle, bundle, random_order(len(y_val)), points=np.zeros(1),
                                   leave_one_out=True)
            print(f"{view:<11} {str(cfg):<55} {acc:8.4f} {curve.map[0]:8.4f} {time.perf_counter() - t:8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
