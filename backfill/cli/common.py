"""What the sub-commands share."""

from __future__ import annotations

import argparse

#: Dataset names of the CLI (kept here, not imported from backfill.datasets, so that ``--help`` loads no torch).
DATASETS = ("cifar100", "fashion_mnist")


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, for the cards of what it writes."""
    return "backfill " + " ".join(args.argv)


#: Backbone names of ``--backbone`` (``backfill.backbones.BACKBONES``'s keys, kept here for the same reason).
BACKBONE_NAMES = ("efficientnet_lite0", "efficientnet_lite2")
