"""``backfill features``: a frozen backbone's features of a dataset split, computed once and cached."""

from __future__ import annotations

import argparse

from backfill.cli.common import BACKBONE_NAMES, DATASETS


def add_features(sub: argparse._SubParsersAction) -> None:
    """``backfill features --dataset ... --backbone ...``."""
    text = ("compute a frozen ImageNet-pretrained backbone's features of a dataset split and cache them, where "
            "`train ... --backbone`, `train transform`, `embed`, `reproduce` and the app read them")
    p = sub.add_parser("features", help=text, description=text + " (a view already cached is not recomputed).")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--backbone", required=True, choices=BACKBONE_NAMES)
    p.add_argument("--data", metavar="DIR", default=None, help="dataset directory (see `train old --help`)")
    p.add_argument("--download", action="store_true", help="download with torchvision if not found")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--view", default="clean", metavar="VIEW[+VIEW]",
                   help="clean, flip (mirrored), crop (a seeded random padded crop and flip per image), or several "
                        "joined by '+', each cached on its own (default clean)")
    p.add_argument("--resolution", type=int, default=None,
                   help="side the 32 px images are upsampled to (default 128)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: one per core; on 2 cores two processes of one thread each extract "
                        "more images/s than one of two, see benchmarks/README.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    """Handler of ``backfill features``: one line per view, its cache file and whether it was computed."""
    from backfill.augmentation import parse_views
    from backfill.backbones import DEFAULT_RESOLUTION, dataset_features, feature_cache_path
    from backfill.datasets import load_dataset
    from backfill.training import configure_threads

    views = parse_views(args.view)
    configure_threads(args.threads)
    data = load_dataset(args.dataset, args.split, args.data, args.download)
    options = {"dataset": args.dataset, "resolution": args.resolution or DEFAULT_RESOLUTION}
    for view in views:
        path = feature_cache_path(args.backbone, data.images, view=view, **options)
        before = path.stat().st_mtime_ns if path.is_file() else None
        feats = dataset_features(args.backbone, data.images, view=view, progress=not args.no_progress, **options)
        after = path.stat().st_mtime_ns
        print(f"{path}: {args.backbone} {options['resolution']} px, {view} view of the {args.split} split, "
              f"{feats.shape[0]} x {feats.shape[1]} ({'cached already' if after == before else 'computed'})")
    return 0
