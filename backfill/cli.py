"""Command-line front end: ``backfill evaluate | train | embed | reproduce``.

Each sub-command has one ``_add_<name>`` function that declares its arguments and binds a handler.
Handlers import their library modules lazily so that ``backfill --help`` stays fast and so that training
commands work on machines without faiss or streamlit.
"""

from __future__ import annotations

import argparse
import sys


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """``backfill evaluate EMB.npz ...`` (engine; contract fixed by issue 2)."""
    # Filled in by the engine work.


def _add_train(sub: argparse._SubParsersAction) -> None:
    """``backfill train {old,new,bct,transform} ...``."""
    # Filled in by the training work.


def _add_embed(sub: argparse._SubParsersAction) -> None:
    """``backfill embed ...``: write the EMB.npz that ``evaluate`` reads."""
    # Filled in by the training work.


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    """``backfill reproduce --dataset ... --out docs/``."""
    # Filled in by the reproduction work.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backfill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_evaluate, _add_train, _add_embed, _add_reproduce):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # user errors: one clear line, no traceback
        print(f"backfill {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
