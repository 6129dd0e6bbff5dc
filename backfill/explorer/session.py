"""The explorer's session: one model suite, its gallery, and everything computed from them once.

An :class:`Explorer` embeds the gallery once, builds one :class:`~backfill.indexing.BackfillIndex` per
(embedding variant, backfill order) and evaluates each method's curve once per order. Results live in a
:class:`~backfill.explorer.cache.Memo` (and, with a cache directory, on disk), and a background
:class:`~backfill.explorer.cache.Worker` computes ahead what the page will ask for next, so the page answers
from what is ready and shows progress for the rest.

Curves use the engine's exact evaluation (:func:`backfill.evaluation.evaluate_curve`) on a seeded sample
of ``curve_queries`` gallery images as leave-one-out queries against the *whole* gallery (default 2,000 of
10,000: the full curve takes minutes on two cores; the sample's mAP is within about a point of it). The
slider moves in steps of the curve grid, so "mAP now" is an exact curve point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import backfill
from backfill.datasets import DEFAULT_DOWNLOAD_ROOT, ImageDataset, load_dataset, subsample_per_class
from backfill.embeddings import ARRAY_NAMES, Embeddings
from backfill.evaluation import curve_points, evaluate_curve
from backfill.explorer.cache import ArrayCache, Memo, Worker, digest
from backfill.indexing import BackfillIndex
from backfill.methods import METHODS, ORDER_ALIASES, Method, make_order
from backfill.metrics import area_under_curve, relative_gain
from backfill.ordering import random_order
from backfill.strategies import get_strategy

__all__ = ["APP_ORDERS", "DEFAULT_CACHE_DIR", "DEFAULT_METHODS", "METRICS", "OPTIONAL_METHODS", "CurveData",
           "Explorer", "SummaryRow", "available_methods", "available_settings", "default_models_dir",
           "curve_values", "download_cifar100", "embed_gallery", "prepare", "wait_until"]

#: Methods always shown side by side, and the optional ones the user can switch on.
DEFAULT_METHODS = ("new_partial", "rank_merge", "full")
OPTIONAL_METHODS = ("old", "offline", "bct", "rt_merge", "full_rho")
#: Methods whose curves every page needs (the old/old and new/new reference lines).
REFERENCE_METHODS = ("old", "new_partial")
#: The orders the app offers (old_centroid needs the old model's training images, which the app does not load;
#: predicted_gain needs the suite's gain_predictor.pt: see :func:`available_orders`).
APP_ORDERS = ("random", "old_entropy", "predicted_gain", "oracle")
METRICS = ("map", "top1", "top5")
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "pretrained"
DEFAULT_CACHE_DIR = DEFAULT_DOWNLOAD_ROOT / "app"

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class CurveData:
    """The curve of one method under one order: ``points`` ``(P,)`` and metric -> ``(P,)`` values."""

    method: str
    order: str
    points: np.ndarray
    values: dict[str, np.ndarray]


@dataclass(frozen=True)
class SummaryRow:
    """One method's numbers at the slider: fractions in [0, 1] (``vs_naive`` and the gain may be negative).

    ``relative_gain`` = (AUC-mAP - old/old) / (new/new - old/old); ``vs_naive`` = its mAP minus the naive
    method's at the same ratio.
    """

    method: Method
    map: float
    top1: float
    auc_map: float
    auc_top1: float
    relative_gain: float
    vs_naive: float


def default_models_dir(dataset: str = "fashion_mnist", setting: str = "homogeneous") -> Path:
    """``pretrained/<dataset>/<setting>`` in this repository."""
    return PRETRAINED_DIR / dataset / setting


def available_settings(dataset: str) -> list[str]:
    """Sub-folders of ``pretrained/<dataset>`` holding a new model, ``homogeneous`` first."""
    root = PRETRAINED_DIR / dataset
    names = [p.name for p in root.iterdir() if (p / "new.pt").is_file()] if root.is_dir() else []
    return sorted(names, key=lambda name: (name != "homogeneous", name))


def available_orders(models_dir: str | Path) -> tuple[str, ...]:
    """The :data:`APP_ORDERS` the suite in ``models_dir`` serves (``predicted_gain`` only with its predictor)."""
    from backfill.suite import SUITE_FILES  # lazily, like ModelSuite: this module loads without torch

    return _orders(has_gain_predictor=(Path(models_dir) / SUITE_FILES["gain_predictor"][0]).is_file())


def _orders(*, has_gain_predictor: bool) -> tuple[str, ...]:
    return tuple(o for o in APP_ORDERS if o != "predicted_gain" or has_gain_predictor)


def download_cifar100(root: str | Path | None = None) -> Path:
    """Download CIFAR-100 with torchvision into ``root`` (default ``~/.cache/backfill``); returns the folder."""
    target = Path(root).expanduser() if root else DEFAULT_DOWNLOAD_ROOT
    load_dataset("cifar100", "test", root=target, download=True)
    return target


class Explorer:
    """Gallery embeddings, orders, indexes and curves of one model suite.

    Parameters
    ----------
    suite : ModelSuite
        Or anything with ``embed``, ``predict``, ``old_entropy_priority``, ``dataset`` and ``cards``.
    gallery : ImageDataset
        The gallery (the dataset's test split).
    n_points, curve_queries, seed : int
        Curve points over [0, 1]; gallery images (seeded sample) used as leave-one-out queries for the
        curves (None: all); seed of the random order and of that sample.
    cache_dir : path or None
        On-disk cache of gallery embeddings and curves (None: memory only).
    batch_size : int
        Images per forward pass when embedding the gallery.
    """

    def __init__(self, suite, gallery: ImageDataset, *, n_points: int = 21, curve_queries: int | None = 2000,
                 seed: int = 0, cache_dir: str | Path | None = None, batch_size: int = 500) -> None:
        if len(gallery) < 2:
            raise ValueError(f"the gallery needs at least 2 images, got {len(gallery)}")
        if curve_queries is not None and curve_queries < 1:
            raise ValueError(f"curve_queries must be positive or None, got {curve_queries}")
        self.points = curve_points(n_points)  # checks n_points
        self.suite, self.gallery = suite, gallery
        self.n_points, self.seed, self.batch_size = len(self.points), int(seed), int(batch_size)
        n = len(gallery)
        if curve_queries is None or curve_queries >= n:
            self.curve_query_ids = np.arange(n, dtype=np.int64)
        else:
            picked = np.random.default_rng(self.seed).choice(n, size=int(curve_queries), replace=False)
            self.curve_query_ids = np.sort(picked).astype(np.int64)
        self.disk = ArrayCache(cache_dir)
        self.memo = Memo()
        self.worker = Worker(self.memo)
        self.embedding_progress: tuple[float, str] = (0.0, "Waiting to embed the gallery")
        self._methods = available_methods(suite, gallery)

    @classmethod
    def from_directory(cls, models_dir: str | Path, data_root: str | Path | None = None, *,
                       per_class: int | None = None, **kwargs) -> Explorer:
        """Load the suite in ``models_dir`` and the test split of its dataset as the gallery.

        ``per_class`` keeps at most that many gallery images per class (quick runs and tests); other keyword
        arguments go to :class:`Explorer`. Raises ``FileNotFoundError`` or ``ValueError`` with the loaders'
        messages.
        """
        from backfill.suite import ModelSuite

        suite = ModelSuite.load(models_dir)
        gallery = load_dataset(suite.dataset, "test", root=data_root)
        if per_class:
            gallery = subsample_per_class(gallery, int(per_class))
        return cls(suite, gallery, **kwargs)

    # ------------------------------------------------------------------------------------ vocabulary
    methods = property(lambda self: list(self._methods.values()),
                       doc="The methods of backfill.methods.METHODS this suite can serve, in display order.")

    @property
    def orders(self) -> tuple[str, ...]:
        """The :data:`APP_ORDERS` this suite serves (``predicted_gain`` needs its ``gain_predictor``)."""
        return _orders(has_gain_predictor=getattr(self.suite, "gain_predictor", None) is not None)

    def method(self, name: str) -> Method:
        """The :class:`~backfill.methods.Method` ``name``; ``ValueError`` when unknown or unavailable."""
        if name not in self._methods:
            raise ValueError(f"method {name!r} is not available with this suite; available: {list(self._methods)}")
        return self._methods[name]

    def label(self, method: str) -> str:
        return self.method(method).label

    dataset = property(lambda self: self.suite.dataset, doc="The suite's dataset name.")
    class_names = property(lambda self: list(self.gallery.class_names), doc="Class names, by class id.")
    gallery_size = property(lambda self: len(self.gallery), doc="Images in the gallery.")

    def class_name(self, gallery_id: int) -> str:
        """Class name of gallery item ``gallery_id``."""
        return self.gallery.class_names[int(self.gallery.labels[gallery_id])]

    def image(self, gallery_id: int) -> np.ndarray:
        """The uint8 image of gallery item ``gallery_id``."""
        return self.gallery.images[gallery_id]

    step_percent = property(lambda self: 100.0 / (self.n_points - 1), doc="Curve grid step in % (the slider's).")

    def sample_ids(self, count: int = 10) -> np.ndarray:
        """Gallery ids of ``count`` one-click samples: the first image of evenly spread classes."""
        classes = np.unique(self.gallery.labels)
        chosen = classes[np.linspace(0, len(classes) - 1, min(count, len(classes))).round().astype(int)]
        return np.array([np.flatnonzero(self.gallery.labels == c)[0] for c in chosen], dtype=np.int64)

    # ------------------------------------------------------------------------------------ embeddings
    def embeddings(self) -> dict[str, Embeddings]:
        """variant -> gallery :class:`~backfill.embeddings.Embeddings` (``base``, ``full``, ``full_rho``)."""
        return self.memo.get(("embeddings",), self._load_embeddings)

    has_embeddings = property(lambda self: ("embeddings",) in self.memo, doc="Whether the gallery is embedded.")

    def _load_embeddings(self) -> dict[str, Embeddings]:
        cards = getattr(self.suite, "cards", {}) or {}
        fingerprint = "|".join(f"{k}:{cards[k].get('weights_sha256')}" for k in sorted(cards))
        key = digest("embeddings", fingerprint, self.gallery.images, self.gallery.labels)
        def report(fraction: float, message: str) -> None:
            self.embedding_progress = (min(max(fraction, 0.0), 1.0), message)

        arrays = self.disk.get_or_compute(key, lambda: embed_gallery(self.suite, self.gallery, self.batch_size,
                                                                     report))
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for name, value in arrays.items():
            variant, array = name.split("/")
            grouped.setdefault(variant, {})[array] = value
        report(1.0, f"Embedded {len(self.gallery):,} gallery images")
        return {variant: Embeddings(self.gallery.labels, **{a: parts[a] for a in ARRAY_NAMES if a in parts})
                for variant, parts in grouped.items()}

    def _digest(self, variant: str) -> str:
        """Digest of the gallery embeddings of ``variant`` (what its curves are computed from)."""
        def compute() -> str:
            emb = self.embeddings()[variant]
            return digest(*(emb.array(a) for a in emb.available))

        return self.memo.get(("digest", variant), compute)

    # ------------------------------------------------------------------------------------ orders, indexes, curves
    def order(self, name: str) -> np.ndarray:
        """The backfill order ``name`` (one of :attr:`orders`): int64 ``(N,)`` permutation."""
        name = ORDER_ALIASES.get(name, name)
        if name not in self.orders:
            raise ValueError(f"unknown order {name!r}; this suite serves {', '.join(self.orders)}")
        if name == "random":  # needs no embeddings
            return self.memo.get(("order", name), lambda: random_order(len(self.gallery), seed=self.seed))
        return self.memo.get(("order", name), lambda: make_order(name, self.embeddings()["base"],
                                                                 suite=self.suite, seed=self.seed))

    def index(self, variant: str, order: str) -> BackfillIndex:
        """The :class:`~backfill.indexing.BackfillIndex` of embedding ``variant`` stored in ``order``."""
        return self.memo.get(("index", variant, order),
                             lambda: BackfillIndex(self.embeddings()[variant], self.order(order)))

    def curve(self, method: str, order: str) -> CurveData:
        """mAP / top-1 / top-5 curve of ``method`` under ``order`` over :attr:`points` (computed if needed)."""
        self.method(method)
        return self.memo.get(("curve", order, method), lambda: self._compute_curve(method, order))

    def curve_ready(self, method: str, order: str) -> bool:
        """Whether the curve is computed (never computes)."""
        return ("curve", order, method) in self.memo

    def _compute_curve(self, method: str, order: str) -> CurveData:
        m = self.method(method)
        ids, order_ids = self.curve_query_ids, self.order(order)

        key = digest("curve", backfill.__version__, m.strategy, self._digest(m.variant), order_ids, ids,
                     self.points)
        values = self.disk.get_or_compute(
            key, lambda: curve_values(m.strategy, self.embeddings()[m.variant], order_ids, ids, self.points))
        return CurveData(method, order, self.points, values)

    # ------------------------------------------------------------------------------------ ahead of time
    def prefetch(self, order: str, methods: Sequence[str]) -> None:
        """Queue, in the background, what the page needs: the gallery embeddings, then the curves of
        ``methods`` and the references under ``order``, then every other method and order (so that later
        widget changes find their curves ready)."""
        self.worker.submit(("embeddings",), self._load_embeddings, priority=0, label="Embedding the gallery")
        available = [m.name for m in self.methods]
        now = [m for m in dict.fromkeys([*REFERENCE_METHODS, *methods]) if m in available]
        jobs = [(1, order, m) for m in now]
        jobs += [(2, order, m) for m in available if m not in now]
        jobs += [(3, other, m) for other in self.orders if other != order for m in available]
        for priority, job_order, name in jobs:
            self.worker.submit(("curve", job_order, name),
                               lambda n=name, o=job_order: self._compute_curve(n, o), priority=priority,
                               label=f"{self.label(name)} curve, {job_order} order")

    def pending(self, order: str, methods: Sequence[str]) -> list[str]:
        """Methods (with the references) whose curves under ``order`` are not computed yet."""
        return [m for m in dict.fromkeys([*REFERENCE_METHODS, *methods]) if not self.curve_ready(m, order)]

    def is_ready(self, order: str, methods: Sequence[str]) -> bool:
        """True when the embeddings and the curves of ``methods`` and the references under ``order`` exist."""
        return self.has_embeddings and not self.pending(order, methods)

    # ------------------------------------------------------------------------------------ numbers at the slider
    def references(self, order: str) -> dict[str, dict[str, float]]:
        """metric -> ``{"old/old": value, "new/new": value}``: the old model alone, the new one at 100%."""
        old, new = self.curve("old", order), self.curve("new_partial", order)
        return {metric: {"old/old": float(old.values[metric][0]), "new/new": float(new.values[metric][-1])}
                for metric in METRICS}

    def point_index(self, ratio: float) -> int:
        """Index of the curve point nearest to ``ratio`` in [0, 1]."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        return int(np.abs(self.points - ratio).argmin())

    def summary(self, methods: Sequence[str], order: str, ratio: float) -> list[SummaryRow]:
        """One :class:`SummaryRow` per method at ``ratio`` (the nearest curve point)."""
        point = self.point_index(ratio)
        refs = self.references(order)["map"]
        naive = self.curve("new_partial", order).values["map"][point]
        rows = []
        for name in methods:
            values = self.curve(name, order).values
            auc = area_under_curve(values["map"])
            rows.append(SummaryRow(self.method(name), float(values["map"][point]), float(values["top1"][point]),
                                   auc, area_under_curve(values["top1"]),
                                   relative_gain(auc, refs["old/old"], refs["new/new"]),
                                   float(values["map"][point] - naive)))
        return rows


def available_methods(suite, gallery: ImageDataset) -> dict[str, Method]:
    """name -> Method for the methods ``suite``'s models can serve (probed on one gallery image)."""
    probe = suite.embed(gallery.images[:1], gallery.labels[:1])
    return {m.name: m for m in METHODS
            if m.variant in probe and get_strategy(m.strategy).runs_on(probe[m.variant].available)}


def embed_gallery(suite, gallery: ImageDataset, batch_size: int, report: ProgressFn) -> dict[str, np.ndarray]:
    """Every embedding of ``gallery`` as ``{"variant/array": (N, d)}``, reporting progress."""
    images, labels, n = gallery.images, gallery.labels, len(gallery)
    if getattr(suite, "uses_pretrained_backbones", False):
        # One pass over the whole gallery: each frozen backbone's features are computed once and cached on
        # disk (keyed by weights and images), then every head runs on them in a second or two.
        def on_progress(done: int, total: int, backbone: str) -> None:
            report(done / total, f"{backbone} features of the gallery (once, then cached): {done:,}/{total:,} images")

        embedded = suite.embed(images, labels, on_progress=on_progress, whole_split=True)
        return {f"{v}/{a}": emb.array(a) for v, emb in embedded.items() for a in emb.available}
    parts: list[dict[str, Embeddings]] = []
    for start in range(0, n, batch_size):
        report(start / n, f"Embedding the gallery: {start:,}/{n:,} images")
        parts.append(suite.embed(images[start:start + batch_size], labels[start:start + batch_size]))
    return {f"{v}/{a}": np.concatenate([p[v].array(a) for p in parts]) for v, emb in parts[0].items()
            for a in emb.available}


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` for up to ``timeout`` seconds; returns its last value (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def curve_values(strategy: str, gallery: Embeddings, order: np.ndarray, query_ids: np.ndarray,
                 points: np.ndarray) -> dict[str, np.ndarray]:
    """metric -> ``(P,)`` curve of ``strategy`` with the gallery items ``query_ids`` as leave-one-out queries."""
    if len(query_ids) == gallery.n:
        curve = evaluate_curve(strategy, gallery, gallery, order, points=points, leave_one_out=True)
    else:
        curve = evaluate_curve(strategy, gallery.subset(query_ids), gallery, order, points=points,
                               exclude=query_ids)
    return {metric: np.asarray(getattr(curve, metric), np.float64) for metric in METRICS}


def prepare(session: Explorer, order: str, methods: Sequence[str], progress: ProgressFn | None = None) -> None:
    """Compute, in this thread, what ``order`` and ``methods`` need (scripts, benchmarks, tests)."""
    report = progress or (lambda fraction, message: None)
    session.embeddings()
    todo = session.pending(order, methods)
    for i, name in enumerate(todo):
        report(i / len(todo), f"Evaluating the {session.label(name)} curve ({order} order)")
        session.curve(name, order)
    report(1.0, "Ready")
