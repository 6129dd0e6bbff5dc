"""Command-line front end: backfill evaluate | features | train | embed | reproduce | gallery | serve.

Each sub-command module has an ``add_*`` function that declares its arguments and binds a handler.
Handlers import their library modules lazily, so ``backfill --help`` stays fast and the engine's commands
work with the core install alone (no torch).
"""

from __future__ import annotations

import argparse
import sys

from backfill.cli.evaluate import add_evaluate
from backfill.cli.evidence import add_embed, add_reproduce
from backfill.cli.features import add_features
from backfill.cli.train import add_train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backfill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_evaluate, add_features, add_train, add_embed, add_reproduce):
        add(sub)
    from backfill.live.cli import add_commands as add_live  # gallery, serve (live backfilling; imports are lazy)

    add_live(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # user errors: one clear line, no traceback
        print(f"backfill {args.command}: error: {exc}", file=sys.stderr)
        return 2
