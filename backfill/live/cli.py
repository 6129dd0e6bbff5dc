"""``backfill gallery load|backfill|status|export|index`` and ``backfill serve`` (imports are lazy: ``backfill --help``
works without the ``serve`` extra, and a command that needs it says how to install it)."""

from __future__ import annotations

import argparse
import json
import sys

from backfill.live.store import ORDERS  # numpy only: the store's server libraries load when it is opened

__all__ = ["add_commands"]

_STORE_HELP = "a directory (embedded PostgreSQL started there) or a postgresql:// URI"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Declare ``gallery`` and ``serve`` on the top-level sub-parsers of ``backfill``."""
    g = sub.add_parser("gallery", help="a live gallery in PostgreSQL + pgvector: load, backfill, status, export",
                       description="A gallery stored in PostgreSQL + pgvector, re-embedded by a resumable Ray "
                       "Data job (needs the serve extra: pip install -e '.[serve]').")
    gsub = g.add_subparsers(dest="gallery_command", required=True)

    p = gsub.add_parser("load", help="create the gallery (old vectors, priorities, images) from a dataset split")
    p.add_argument("--store", required=True, metavar="STORE", help=_STORE_HELP)
    p.add_argument("--suite", required=True, metavar="DIR", help="model suite directory (old.pt, new.pt, ...)")
    p.add_argument("--dataset", required=True, choices=["cifar100", "fashion_mnist"])
    p.add_argument("--data", metavar="DIR", default=None, help="dataset directory (default: the usual places)")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items")
    p.add_argument("--replace", action="store_true", help="overwrite an existing gallery")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_load)

    p = gsub.add_parser("backfill", help="run or resume the re-embedding job (rerun the same command to resume)")
    p.add_argument("--store", required=True, metavar="STORE", help=_STORE_HELP)
    p.add_argument("--suite", required=True, metavar="DIR", help="model suite directory (its new model is used)")
    p.add_argument("--order", choices=ORDERS, default="random",
                   help="random (seeded at load time), old_entropy (uncertain items first) or predicted_gain "
                        "(largest predicted gain first: the suite the gallery was loaded with had a gain "
                        "predictor)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="items per model call and per write")
    p.add_argument("--batches-per-task", type=int, default=8, metavar="N",
                   help="batches an actor pipelines per Ray task (reads and writes overlap the model; 1: none)")
    p.add_argument("--yield-to-searches", action=argparse.BooleanOptionalAction, default=True,
                   help="while searches of this store run (`backfill serve`, the app), do each batch's read, "
                        "embedding and write in turn, leaving cores to the searches (default: yes)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="model actors (one GPU each if present)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads per actor")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster address (ray://head:10001 or auto); default: a local Ray")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N more items")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_backfill)

    p = gsub.add_parser("status", help="items, backfilled count and ratio")
    p.add_argument("--store", required=True, metavar="STORE", help=_STORE_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_run_status)

    p = gsub.add_parser("export", help="write EMB.npz: ids, labels, old, new (NaN where pending), backfilled")
    p.add_argument("--store", required=True, metavar="STORE", help=_STORE_HELP)
    p.add_argument("--out", required=True, metavar="EMB.npz")
    p.set_defaults(handler=_run_export)

    p = gsub.add_parser("index", help="build HNSW indexes for `serve --ann` (pending old vectors, new vectors)")
    p.add_argument("--store", required=True, metavar="STORE", help=_STORE_HELP)
    p.add_argument("--m", type=int, default=16, help="HNSW links per node (default 16)")
    p.add_argument("--ef-construction", type=int, default=64, help="HNSW build candidate list (default 64)")
    p.add_argument("--side", choices=("old", "new", "both"), default="both",
                   help="which side: old = the pending old vectors (cheap to keep during a job: rows only leave), "
                        "new = the new vectors (every backfilled item is an insertion); default both")
    p.set_defaults(handler=_run_index)

    p = sub.add_parser("serve", help="HTTP search service over a live gallery (FastAPI; docs at /docs)",
                       description="Answer searches with the online-backfilling methods while the job runs: "
                       "GET /status, POST /search (multipart field image; k, method).")
    p.add_argument("--store", required=True, metavar="STORE", help=_STORE_HELP)
    p.add_argument("--suite", required=True, metavar="DIR", help="model suite directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ann", action="store_true", help="search with HNSW indexes (iterative scan) if built")
    p.set_defaults(handler=_run_serve)


def _need_extra() -> None:
    try:
        import pgvector  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"live backfilling needs the serve extra ({exc.name} is missing): "
                         "pip install -e '.[serve]'") from None


def _run_load(args: argparse.Namespace) -> int:
    _need_extra()
    from backfill.live.gallery import load_gallery
    from backfill.live.store import open_store
    from backfill.suite import ModelSuite

    suite = ModelSuite.load(args.suite)
    with open_store(args.store, create=True) as store:  # closed on errors too
        n = load_gallery(store, suite, dataset=args.dataset, split=args.split, data=args.data, limit=args.limit,
                         replace=args.replace, progress=not args.no_progress)
    print(f"{args.store}: gallery of {n} items loaded ({args.dataset} {args.split}), 0 backfilled")
    return 0


def _run_backfill(args: argparse.Namespace) -> int:
    _need_extra()
    from backfill.live.job import run_job

    r = run_job(args.store, args.suite, order=args.order, batch_size=args.batch_size, workers=args.workers,
                ray_address=args.ray_address, limit=args.limit, threads=args.threads,
                batches_per_task=args.batches_per_task, yield_to_searches=args.yield_to_searches,
                progress=not args.no_progress)
    print(f"{args.store}: wrote {r.written} of {r.scheduled} scheduled items; "
          f"{r.backfilled}/{r.total} backfilled ({100 * r.backfilled / max(r.total, 1):.1f}%)")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    _need_extra()
    from backfill.live.store import open_store

    with open_store(args.store) as store:
        s = store.status()
    if args.json:
        print(json.dumps(s))
    else:
        print(f"{s['backfilled']}/{s['total']} backfilled ({100 * s['ratio']:.1f}%), job running: "
              f"{'yes' if s['job_running'] else 'no'}, new model: {', '.join(s['models']) or '-'}, orders: "
              f"{', '.join(s['orders'])}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    _need_extra()
    from backfill.live.gallery import export_npz
    from backfill.live.store import open_store

    with open_store(args.store) as store:
        arrays = export_npz(store, args.out)
    done = int(arrays["backfilled"].sum())
    print(f"{args.out}: {arrays['ids'].size} items, {done} backfilled"
          + ("" if done == arrays["ids"].size else " (new rows of pending items are NaN)"))
    return 0


def _run_index(args: argparse.Namespace) -> int:
    _need_extra()
    import time

    from backfill.live.store import open_store

    with open_store(args.store) as store:
        store.require_loaded()
        t = time.perf_counter()
        sides = ("old", "new") if args.side == "both" else (args.side,)
        store.build_hnsw(m=args.m, ef_construction=args.ef_construction, sides=sides)
    note = " (every later backfilled item is also an insertion into the new side's index, which slows the job)"
    print(f"{args.store}: HNSW index on {' and '.join(sides)} vectors built in {time.perf_counter() - t:.1f} s; "
          f"search with `backfill serve --ann`{note if 'new' in sides else ''}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    _need_extra()
    import uvicorn

    from backfill.live.service import create_app

    app = create_app(args.store, args.suite, ann=args.ann, release_server=True)
    print(f"serving {args.store} on http://{args.host}:{args.port} (docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
