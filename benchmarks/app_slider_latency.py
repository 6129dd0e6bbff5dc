"""Server-side time of one backfill-slider change in the Streamlit app, after warm-up.

Two measurements on the same gallery (default: the whole 10,000-image Fashion-MNIST test split with the
shipped weights):

1. ``explorer``: the library calls one slider change triggers (``backfill.explorer``/``backfill.plots``):
   for each shown method the query's top-k and AP, the hit thumbnails, the metrics summary and the two
   curve figures.
2. ``apptest`` (with ``--apptest``): a whole script rerun through ``streamlit.testing.v1.AppTest`` after
   ``slider.set_value`` - everything the server does for one slider move (widgets, images, charts, the
   teaching section), minus the network and the browser's drawing.

Usage::

    python benchmarks/app_slider_latency.py [--models DIR] [--per-class N] [--repeats R] [--apptest]

Warm-up (gallery embeddings and curves) is cached in ``~/.cache/backfill/app`` unless ``--no-cache``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERCENTS = list(range(0, 101, 5))


def _stats(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   max {ms[-1]:7.1f} ms   (n={len(ms)})"


def bench_explorer(explorer, methods: list[str], order: str, k: int, repeats: int) -> list[float]:
    from backfill import plots

    query = explorer.gallery_query(int(explorer.sample_ids()[0]))
    refs = explorer.references(order)
    labels = {m: explorer.label(m) for m in methods}
    times = []
    for _ in range(repeats):
        for percent in PERCENTS:
            ratio = percent / 100
            start = time.perf_counter()
            for name in methods:
                result = explorer.search(query, name, ratio, order, k)
                [explorer.hit_thumbnail(h, size=64) for h in result.hits]
            explorer.summary(methods, order, ratio)
            for metric in ("map", "top1"):
                series = {m: explorer.curve(m, order).values[metric] for m in methods}
                plots.curve_figure(explorer.points, series, labels=labels, references=refs[metric], ratio=ratio,
                                   metric=metric).to_json()
            times.append(time.perf_counter() - start)
    return times


def bench_apptest(repeats: int) -> tuple[float, list[float]]:
    from streamlit.testing.v1 import AppTest

    start = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800).run()
    warm = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the app raised: {[e.value for e in at.exception]}")
    times = []
    for _ in range(repeats):
        for percent in PERCENTS:
            slider = at.slider(key="percent").set_value(percent)
            start = time.perf_counter()
            slider.run()
            times.append(time.perf_counter() - start)
    return warm, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="suite directory (default: the app's default)")
    parser.add_argument("--per-class", type=int, default=None, help="gallery images per class (default: all)")
    parser.add_argument("--curve-queries", type=int, default=2000, help="as BACKFILL_APP_CURVE_QUERIES")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the 21 slider positions")
    parser.add_argument("--order", default="random")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--apptest", action="store_true", help="also time whole AppTest reruns")
    parser.add_argument("--no-cache", action="store_true", help="do not use the on-disk cache")
    args = parser.parse_args(argv)

    from backfill.explorer import DEFAULT_CACHE_DIR, DEFAULT_METHODS, Explorer, default_models_dir

    models = args.models or os.environ.get("BACKFILL_APP_MODELS") or str(default_models_dir())
    cache = None if args.no_cache else DEFAULT_CACHE_DIR
    start = time.perf_counter()
    explorer = Explorer.from_directory(models, per_class=args.per_class, curve_queries=args.curve_queries,
                                       cache_dir=cache)
    methods = [m for m in DEFAULT_METHODS if m in {x.name for x in explorer.methods}]
    explorer.prepare(args.order, methods)
    print(f"models {models}; gallery {len(explorer.gallery):,} images; curves on "
          f"{len(explorer.curve_query_ids):,} queries; warm-up {time.perf_counter() - start:.1f} s "
          f"(disk cache {'on' if cache else 'off'})")
    times = bench_explorer(explorer, methods, args.order, args.k, args.repeats)
    print(f"explorer calls per slider change ({', '.join(methods)}; k={args.k}): {_stats(times)}")
    if args.apptest:
        os.environ["BACKFILL_APP_MODELS"] = models
        os.environ["BACKFILL_APP_CURVE_QUERIES"] = str(args.curve_queries)
        os.environ["BACKFILL_APP_CACHE"] = str(cache) if cache else "off"
        if args.per_class:
            os.environ["BACKFILL_APP_PER_CLASS"] = str(args.per_class)
        warm, times = bench_apptest(args.repeats)
        print(f"AppTest first run {warm:.1f} s; whole rerun per slider change: {_stats(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
