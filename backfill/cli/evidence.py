"""``backfill embed`` (a split into EMB.npz) and ``backfill reproduce`` (the comparison)."""

from __future__ import annotations

import argparse

from backfill.cli.common import DATASETS


def add_embed(sub: argparse._SubParsersAction) -> None:
    """``backfill embed ...``: write the EMB.npz that ``evaluate`` reads."""
    text = "embed a dataset split with a model suite and write the EMB.npz that `backfill evaluate` reads"
    p = sub.add_parser("embed", help=text, description=text + " (cached: skipped when OUT exists and was "
                       "made from the same weights and images; --force redoes it).")
    p.add_argument("--suite", required=True, metavar="DIR",
                   help="model suite directory (old.pt, new.pt, ...)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", metavar="DIR", default=None, help="dataset directory (see `train old --help`)")
    p.add_argument("--download", action="store_true", help="download with torchvision if not found")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--variant", choices=["base", "full", "full_rho"], default="base",
                   help="base: transformed = regression psi, with bct; full: metric-compatible psi; "
                        "full_rho: new = rho(new), transformed = psi(rho(new))")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--force", action="store_true", help="recompute even if OUT is up to date")
    p.add_argument("--out", required=True, metavar="EMB.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    """Handler of ``backfill embed``."""
    from backfill.suite import embed_split

    path, reused = embed_split(args.suite, args.dataset, args.out, data=args.data, download=args.download,
                               split=args.split, variant=args.variant, batch_size=args.batch_size,
                               device=args.device, force=args.force, progress=not args.no_progress)
    print(f"{path}: {'up to date, not recomputed' if reused else 'written'}")
    return 0


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    """``backfill reproduce --dataset ... --out docs/``."""
    p = sub.add_parser("reproduce", help="reproduce the paper's comparison with the shipped weights",
                       description="Embed the test split with pretrained/<dataset>/<setting>, evaluate every "
                       "method, and write OUT/results.json, OUT/results.md and the curve images.")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset directory (default: $BACKFILL_CIFAR100 / Debian Fashion-MNIST / bundle)")
    p.add_argument("--out", default="docs", metavar="DIR", help="output directory (default: docs)")
    p.add_argument("--pretrained", default="pretrained", metavar="DIR", help="weights root (default: pretrained)")
    p.add_argument("--setting", action="append", choices=["homogeneous", "heterogeneous"],
                   help="only this setting (repeatable; default: every trained one)")
    p.add_argument("--points", type=int, default=21, help="backfill ratios on the curve (default 21)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random backfill order")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from backfill.reproduce import reproduce

    results = reproduce(args.dataset, args.out, args.data, args.pretrained, args.setting, args.points,
                        args.seed, progress=not args.no_progress)
    for setting, rows in results.items():
        print(f"{args.dataset} / {setting}:")
        for name, row in rows.items():
            if not name.startswith("_"):
                gain = row.get("relative_gain")
                print(f"  {name:28s} AUC-mAP {100 * row['auc_map']:5.1f}  "
                      f"gain {'-' if gain is None else f'{100 * gain:4.0f}%'}  mAP@100% {100 * row['map_at_100']:5.1f}")
    print(f"wrote {args.out}/results.json, results.md and curve images")
    return 0
