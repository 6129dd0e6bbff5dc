"""Server-side time of widget changes in the Streamlit app (slider, order, method toggle, sample), warm.

Each change is a whole script rerun through ``streamlit.testing.v1.AppTest`` (everything the server does for
it: widgets, searches, images, charts, the teaching section; minus the network and the browser's drawing),
after the app has finished its background work. Beside it, the same change as the previous approach served
it: the curves it needs computed *in the page run*, on demand (timed on a fresh explorer with no curves yet;
slider moves and sample clicks need no curve, so both approaches cost one rerun there).

Usage::

    python benchmarks/app_slider_latency.py [--models DIR] [--per-class N] [--repeats R]

Default: the whole 10,000-image Fashion-MNIST test split with the shipped weights, curves on 2,000 queries
(as the app). The app's disk cache is off here, so the numbers do not depend on earlier runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERCENTS = list(range(0, 101, 5))


def _stats(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"median {statistics.median(ms):7.0f} ms  max {ms[-1]:7.0f} ms  (n={len(ms)})"


def _timed(element) -> float:
    start = time.perf_counter()
    element.run()
    return time.perf_counter() - start


def warm_app(timeout: float = 1800):
    """An AppTest of app.py whose explorer has finished every background job."""
    from streamlit.testing.v1 import AppTest

    from backfill.explorer import Explorer

    start = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout).run()
    if at.exception:
        raise RuntimeError(f"the app raised: {[e.value for e in at.exception]}")
    first = time.perf_counter() - start
    # The app keeps its explorer in st.cache_resource of this process; find it to wait for its worker.
    with warnings.catch_warnings():  # looking at every object touches deprecated torch attributes
        warnings.simplefilter("ignore")
        explorer = next(o for o in gc.get_objects() if isinstance(o, Explorer))
    while explorer.worker.pending:
        time.sleep(0.2)
    print(f"app: first run {first:.1f} s (gallery embedded), background curves done after "
          f"{time.perf_counter() - start:.1f} s")
    at.run()
    return at, explorer


def bench_now(at, explorer, repeats: int) -> dict[str, list[float]]:
    """Warm rerun times per widget kind."""
    optional = [f"show_{m.name}" for m in explorer.methods if f"show_{m.name}" in {t.key for t in at.toggle}]
    sample_keys = [b.key for b in at.button if b.key and b.key.startswith("sample_")]
    times: dict[str, list[float]] = {"slider": [], "order": [], "toggle": [], "sample": []}
    for _ in range(repeats):
        for percent in PERCENTS:
            times["slider"].append(_timed(at.slider(key="percent").set_value(percent)))
        for key in optional:  # on, then off again
            times["toggle"].append(_timed(at.toggle(key=key).set_value(True)))
        for key in optional:
            at.toggle(key=key).set_value(True)
        at.run()
        for order in ("old_entropy", "oracle", "random"):  # every method on
            times["order"].append(_timed(at.radio(key="order").set_value(order)))
        for key in optional:
            at.toggle(key=key).set_value(False)
        at.run()
        for key in sample_keys:
            times["sample"].append(_timed(at.button(key=key).click()))
    return times


def bench_on_demand(models: str, per_class: int | None, curve_queries: int) -> dict[str, list[float]]:
    """The curve work each change triggered when curves were computed in the page run."""
    from backfill.explorer import DEFAULT_METHODS, Explorer, prepare

    explorer = Explorer.from_directory(models, per_class=per_class, curve_queries=curve_queries)
    prepare(explorer, "random", DEFAULT_METHODS)  # the default page, before any change
    optional = [m.name for m in explorer.methods if m.name not in DEFAULT_METHODS]
    toggles = []
    for name in optional:
        start = time.perf_counter()
        explorer.curve(name, "random")
        toggles.append(time.perf_counter() - start)
    orders = []
    for order in ("old_entropy", "oracle"):
        start = time.perf_counter()
        prepare(explorer, order, [m.name for m in explorer.methods])
        orders.append(time.perf_counter() - start)
    return {"toggle": toggles, "order": orders}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="suite directory (default: the app's default)")
    parser.add_argument("--per-class", type=int, default=None, help="gallery images per class (default: all)")
    parser.add_argument("--curve-queries", type=int, default=2000, help="as BACKFILL_APP_CURVE_QUERIES")
    parser.add_argument("--repeats", type=int, default=2, help="passes over every widget change")
    args = parser.parse_args(argv)

    from backfill.explorer import default_models_dir

    models = args.models or os.environ.get("BACKFILL_APP_MODELS") or str(default_models_dir())
    os.environ.update({"BACKFILL_APP_MODELS": models, "BACKFILL_APP_CURVE_QUERIES": str(args.curve_queries),
                       "BACKFILL_APP_CACHE": "off"})
    if args.per_class:
        os.environ["BACKFILL_APP_PER_CLASS"] = str(args.per_class)
    at, explorer = warm_app()
    print(f"models {models}; gallery {explorer.gallery_size:,} images; curves on "
          f"{len(explorer.curve_query_ids):,} queries; {len(explorer.methods)} methods")
    now = bench_now(at, explorer, args.repeats)
    demand = bench_on_demand(models, args.per_class, args.curve_queries)
    print(f"\n{'widget change':<14} {'previous: curves computed in the page run':<50} now: warm app, one rerun")
    for kind in ("slider", "order", "toggle", "sample"):
        rerun = statistics.median(now[kind])
        before = [rerun + s for s in demand.get(kind, [0.0])]
        print(f"{kind:<14} {_stats(before):<50} {_stats(now[kind])}")
    worst = max(max(v) for v in now.values())
    print(f"\nslowest warm change: {worst * 1000:.0f} ms ({'within' if worst <= 1 else 'over'} the 1 s goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
