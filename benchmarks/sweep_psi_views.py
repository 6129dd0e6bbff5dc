"""What psi and rho should learn from: the heads' own train images (clean or mirrored) or images they never saw.

The heads embed the images they trained on more tightly than unseen ones, so psi and rho, trained on those
embeddings, meet looser ones at query time. This script trains old (Lite0, classes 0-49) and new (Lite0, all
classes) heads on cached features of 300 train images per class ("own"), keeps another 100 per class away
from the heads ("held-out"), and scores, on a third 100 per class of the train split (queries = gallery,
leave-one-out, 21 points, random order), the full method (``rt_merge``) with psi (and rho) trained on: the
heads' own images (clean view), the held-out images, and the heads' own images mirrored (``flip``: the
backbone's cached flip-view features), cropped (``crop``: one random padded crop and flip per image) or both
(``flip+crop``: a row per image and view). The test split plays no part. ``--setting heterogeneous`` puts the
new head on Lite2 features (the shipped heterogeneous suite's upgrade); ``--psi KEY=VALUE`` overrides one of
psi's (and rho's) training options (``TransformConfig``) in every arm.

    python benchmarks/sweep_psi_views.py --data ../shared/data/cifar100 [--arms own,held_out,own_flip,own+rho]
        [--setting heterogeneous] [--psi epochs=60 --psi temperature=0.07]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backfill.augmentation import parse_views
from backfill.backbones import dataset_features
from backfill.datasets import load_dataset, per_class_indices
from backfill.ordering import random_order
from backfill.transform_training import TransformConfig, fit_transform

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
import sweep_merge  # noqa: E402

sweep_heads, sweep_mc = sweep_merge.sweep_heads, sweep_merge.sweep_mc

#: The shipped recipe's heads (HeadConfig defaults) and psi options (pretrained/train.sh; its psi + rho trains at
#: temperature 0.1: ``--psi temperature=0.1``).
HEADS = dict(epochs=30, lr=2e-3, weight_decay=1e-4, hidden=512, label_smoothing=0.1, logit_scale=8.0)
PSI = dict(loss="mc", temperature=0.05, regression_weight=0.0, epochs=40, hidden=1024)
#: The new head's backbone in each setting (the old head is always on Lite0).
NEW_BACKBONE = {"homogeneous": "efficientnet_lite0", "heterogeneous": "efficientnet_lite2"}
ARMS = "own,held_out,own_flip,own+rho,held_out+rho,own_flip+rho,own_crop+rho,own_flip+crop,own_flip+crop+rho"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--arms", default=ARMS, help=f"comma-separated psi training sets, +rho to train rho too "
                                                 f"(+rhoN: an MLP rho of hidden width N; default {ARMS})")
    p.add_argument("--seed", type=int, default=0, help="seed of psi and rho (initialisation, batches)")
    p.add_argument("--setting", choices=sorted(NEW_BACKBONE), default="homogeneous")
    p.add_argument("--psi", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of psi's training options in every arm (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    psi_options = PSI | dict(parse_option(option) for option in args.psi)
    ds = load_dataset("cifar100", "train", args.data)
    backbones = {"old": "efficientnet_lite0", "new": NEW_BACKBONE[args.setting]}
    # views[kind][view]: the backbone features each head reads
    views = {kind: {view: dataset_features(backbone, ds.images, **({} if view == "clean" else {"view": view}))
                    for view in ("clean", "flip", "crop")}
             for kind, backbone in backbones.items()}
    y = ds.labels
    val = per_class_indices(y, 100, seed=1)  # scored: the same 100 per class as sweep_merge.py
    fit = np.setdiff1d(np.arange(len(y)), val)
    held_out = fit[per_class_indices(y[fit], 100, seed=2)]
    own = np.setdiff1d(fit, held_out)
    heads = {}
    for kind, rows, classes in (("old", own[y[own] < 50], 50), ("new", own, 100)):
        clean = views[kind]["clean"]
        heads[kind] = sweep_heads.train(torch.from_numpy(clean[rows][None]), torch.from_numpy(y[rows]).long(),
                                        classes, backbone=backbones[kind], **HEADS)
    val_old, val_new = (sweep_merge.embed(heads[k], views[k]["clean"][val]) for k in ("old", "new"))
    order = random_order(len(val), seed=0)

    def embeddings(names: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Old and new embeddings and labels of ``rows`` in each of the views ``names``, one block per view."""
        return (np.concatenate([sweep_merge.embed(heads["old"], views["old"][v][rows]) for v in names]),
                np.concatenate([sweep_merge.embed(heads["new"], views["new"][v][rows]) for v in names]),
                np.tile(y[rows], len(names)))

    def training_set(name: str) -> tuple[list[str], np.ndarray]:
        """``held_out``, or ``own`` (clean) / ``own_VIEW[+VIEW]``: the heads' own images in those views."""
        if name == "held_out":
            return ["clean"], held_out
        if not name.startswith("own"):
            raise ValueError(f"unknown arm {name!r}: held_out, own or own_VIEW[+VIEW]")
        return list(parse_views(name.removeprefix("own").removeprefix("_") or "clean")), own

    print(f"{args.setting}, seed {args.seed}, psi options {psi_options}", flush=True)

    print(f"{'psi trained on':<16} {'rows':>6} {'full gain':>9} {'mAP at 0':>9} {'mAP at 100%':>11} "
          f"{'old/old':>8} {'new/new':>8} {'seconds':>8}", flush=True)
    for arm in args.arms.split(","):
        # "+rho": a linear rho, "+rhoN": an MLP rho of hidden width N
        name, _, rho_width = arm.partition("+rho")
        rho, rho_hidden = "+rho" in arm, int(rho_width) if rho_width else None
        old, new, labels = embeddings(*training_set(name))
        t = time.perf_counter()
        psi, head, _ = fit_transform(old, new, labels, TransformConfig(**psi_options, rho=rho, rho_hidden=rho_hidden,
                                                                     seed=args.seed),
                                     progress=False)
        r = sweep_mc.score(psi, head, val_old, val_new, y[val], order)
        print(f"{arm:<16} {len(labels):6d} {r['relative_gain']:9.3f} {r['map_at_0']:9.4f} {r['map_at_100']:11.4f} "
              f"{r['old_map']:8.4f} {r['new_map']:8.4f} {time.perf_counter() - t:8.0f}", flush=True)


def parse_option(text: str) -> tuple[str, object]:
    """``"epochs=60"`` -> ``("epochs", 60)``: KEY a TransformConfig field; VALUE an int, else a float, else the
    text (``none``: None). TransformConfig.validated checks the values."""
    key, sep, value = text.partition("=")
    fields = {f.name for f in dataclasses.fields(TransformConfig)}
    if not sep or key not in fields:
        raise SystemExit(f"--psi {text!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
    if value.lower() == "none":
        return key, None
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


if __name__ == "__main__":
    main()
