"""The computing side of the Streamlit explorer (``app.py``): plain Python, no streamlit import.

An :class:`Explorer` holds one trained :class:`~backfill.suite.ModelSuite` and one gallery (the test split of
its dataset). It embeds the gallery once, builds one :class:`~backfill.indexing.BackfillIndex` per (embedding
variant, backfill order), evaluates each method's curve once per order, and then answers the cheap
questions the app asks on every slider move: the top-k of a query under each method at ratio ``p`` with
each hit's score and space, the query's AP over the full ranking, and the curve values at ``p``. Everything
expensive is memoised inside the object (thread-safe: streamlit serves sessions from threads) and, when a
cache directory is given, on disk, so the app keeps one instance in ``st.cache_resource`` and a restarted
app does not recompute.

Choices stated here (the app shows them too):

* Orders: ``random`` (seeded, the paper's); ``deployable``:
  :func:`backfill.ordering.classifier_entropy_priority` - the entropy of the old model's own classifier
  (its exact logits, ``logit_layer()``) on the *stored old* gallery embeddings, uncertain items first: it
  needs nothing a running service would not have, not even training data (``backfill reproduce`` calls
  this order ``old_entropy``); ``oracle``: :func:`backfill.ordering.oracle_priority` (uses new embeddings
  and labels: an upper-bound reference only). One order serves every method, so the
  methods are compared on the same backfilled set.
* Curves: the engine's exact curves (:func:`backfill.evaluation.evaluate_curve`) on a seeded sample of
  ``curve_queries`` gallery images used as leave-one-out queries against the *whole* gallery (default
  2,000 of 10,000: Fashion-MNIST has 1,000 relevant items per query, which makes the full 10,000-query
  curve take minutes on two cores; the sample's mAP is within about one point of the full one). The slider
  moves in steps of the curve grid, so "mAP now" is an exact curve point, not an interpolation.
  Per-query results (top-k and the query's AP) are exact at any ratio.
* Uploads: at most :data:`MAX_UPLOAD_MB` MB per file and :data:`backfill.data.MAX_IMAGE_PIXELS` pixels;
  decoding and preprocessing are :func:`backfill.data.load_image` / ``preprocess``, the path every image
  takes. An upload's class is unknown (no AP, no green/red) unless the user states it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import backfill
from backfill.data import (
    DEFAULT_DOWNLOAD_ROOT,
    ImageDataset,
    ImageLoadError,
    load_dataset,
    load_image,
    subsample_per_class,
    to_model_mode,
)
from backfill.embeddings import ARRAY_NAMES, Embeddings
from backfill.evaluation import curve_points, evaluate_curve
from backfill.indexing import BackfillIndex
from backfill.metrics import area_under_curve, relative_gain
from backfill.ordering import (
    num_backfilled,
    oracle_priority,
    order_by_score,
    random_order,
)
from backfill.strategies import get_strategy

#: Largest accepted upload in megabytes (the app passes it to ``st.file_uploader(max_upload_size=...)`` too).
MAX_UPLOAD_MB = 10
#: File types the uploader accepts (animated GIF/WebP: the first frame is used).
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif")
#: Methods always shown side by side, and the optional ones the user can switch on.
DEFAULT_METHODS = ("new_partial", "rank_merge", "full")
OPTIONAL_METHODS = ("old", "offline", "bct", "rt_merge", "full_rho")
#: Methods whose curves every page needs (the old/old and new/new reference lines).
REFERENCE_METHODS = ("old", "new_partial")
ORDERS = ("random", "deployable", "oracle")
ORDER_LABELS = {
    "random": "random (the paper's)",
    "deployable": "deployable: old model's uncertainty first",
    "oracle": "oracle (peeks at new embeddings; reference only)",
}
METRICS = ("map", "top1", "top5")
#: Short display names (the suite's labels are long for table columns and metric tiles).
DISPLAY_LABELS = {
    "old": "old/old",
    "offline": "offline",
    "new_partial": "naive (new-partial)",
    "bct": "BCT",
    "rank_merge": "rank merge",
    "rt_merge": "RT merge (regression ψ)",
    "full": "full (metric-compatible ψ)",
    "full_rho": "full + ρ",
}
SPACE_COLORS = {"old": "#ff7f0e", "new": "#1f77b4"}  # the same as backfill.plots.SPACE_COLORS
CORRECT_COLORS = {True: "#2ca02c", False: "#d62728", None: "#aaaaaa"}
SPACE_NAMES = ("old", "new")  # SearchResult.spaces: 0 = old space, 1 = new space
REPO_ROOT = Path(__file__).resolve().parent.parent
PRETRAINED_DIR = REPO_ROOT / "pretrained"
DEFAULT_CACHE_DIR = DEFAULT_DOWNLOAD_ROOT / "app"
#: The on-disk cache keeps its most recently used entries up to this size (one 10,000-image gallery's
#: embeddings of every variant take about 50 MB, a curve about 1 KB).
MAX_CACHE_BYTES = 500 * 2**20

ProgressFn = Callable[[float, str], None]


class UploadError(ValueError):
    """An uploaded file cannot be used as a query; the message names the file and the reason."""


@dataclass(frozen=True)
class Query:
    """One query image, embedded in every variant of the suite.

    Attributes:
        key: unique id, ``"sample:<gallery id>"`` or ``"upload:<position>:<file name>"``.
        name: display name.
        image: uint8 ``(H, W[, C])`` image as shown (the dataset image, or the decoded upload in RGB).
        embeddings: variant -> one-row :class:`~backfill.embeddings.Embeddings`.
        label: known class id (a gallery sample, or the class a user stated for an upload), else None.
        gallery_id: position of the query in the gallery (excluded from its own ranking), else None.
        predicted, confidence: the new model's predicted class id and its probability (uploads).
    """

    key: str
    name: str
    image: np.ndarray
    embeddings: dict[str, Embeddings]
    label: int | None = None
    gallery_id: int | None = None
    predicted: int | None = None
    confidence: float | None = None

    def with_label(self, label: int | None) -> Query:
        """A copy whose class is ``label`` (the user states the class of an upload; None = unknown)."""
        return replace(self, label=None if label is None else int(label))


@dataclass(frozen=True)
class Hit:
    """One retrieved gallery item: 1-based ``rank``, cosine ``score``, ``space`` "old" or "new", its class,
    and whether it has the query's class (None when the query's class is unknown)."""

    rank: int
    gallery_id: int
    score: float
    space: str
    label: int
    correct: bool | None


@dataclass(frozen=True)
class MethodResult:
    """Top-k of one query under one method at one ratio, and the query's AP over the full ranking.

    ``ap`` is None when the query's class is unknown. ``n_reachable`` is how many gallery items the method
    can rank at this ratio (``new_partial`` only reaches the backfilled part).
    """

    method: str
    label: str
    hits: tuple[Hit, ...]
    ap: float | None
    n_reachable: int


@dataclass(frozen=True)
class CurveData:
    """The curve of one method under one order: ``points`` ``(P,)`` and metric -> ``(P,)`` values."""

    method: str
    order: str
    points: np.ndarray
    values: dict[str, np.ndarray]


def default_models_dir(dataset: str = "fashion_mnist", setting: str = "homogeneous") -> Path:
    """``pretrained/<dataset>/<setting>`` in this repository."""
    return PRETRAINED_DIR / dataset / setting


def available_settings(dataset: str) -> list[str]:
    """Settings (sub-folders) of ``pretrained/<dataset>`` that hold a new model; ``homogeneous`` (the
    default) first, then the others sorted."""
    root = PRETRAINED_DIR / dataset
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if (p / "new.pt").is_file()]
    return sorted(names, key=lambda name: (name != "homogeneous", name))


def download_cifar100(root: str | Path | None = None) -> Path:
    """Download CIFAR-100 (official split) with torchvision into ``root`` (default ``~/.cache/backfill``).

    Needs internet. Returns the directory to give the app as its CIFAR-100 data directory.
    """
    target = Path(root).expanduser() if root else DEFAULT_DOWNLOAD_ROOT
    load_dataset("cifar100", "test", root=target, download=True)
    return target


# ------------------------------------------------------------------------------------------ images
def read_upload(name: str, data: bytes, max_mb: float = MAX_UPLOAD_MB) -> Image.Image:
    """Decode an uploaded file into a PIL image, or raise :class:`UploadError` naming file and reason.

    Rejects empty files, files over ``max_mb`` MB and anything :func:`backfill.data.load_image` rejects
    (not an image, truncated or corrupt, too many pixels). Animated images give their first frame.
    """
    if len(data) == 0:
        raise UploadError(f"{name}: the file is empty (0 bytes)")
    if len(data) > max_mb * 2**20:
        raise UploadError(f"{name}: the file is {len(data) / 2**20:.1f} MB, over the {max_mb:g} MB limit")
    try:
        image = load_image(data)
    except ImageLoadError as exc:
        # load_image calls bytes input "image data"; the user needs the file name instead.
        message = str(exc)
        reason = f"this file {message.removeprefix('image data ')}" if message.startswith("image data ") else message
        raise UploadError(f"{name}: {reason}") from exc
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return image


def display_array(image: Image.Image) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB array of any PIL image (transparency composited on white), for display."""
    return np.asarray(to_model_mode(image, "RGB"), dtype=np.uint8)


def thumbnail(image: np.ndarray, size: int = 72, border: str | None = None, width: int = 4,
              badge: str | None = None, badge_color: str = "#1f77b4") -> Image.Image:
    """A square RGB display thumbnail of a uint8 ``(H, W[, C])`` image.

    ``border``: frame colour; ``badge``: a short text drawn on a ``badge_color`` strip along the bottom
    (drawn into the image because captions cannot be coloured). Small images (28x28, 32x32) are enlarged
    with nearest-neighbour so their pixels stay crisp.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    pil = Image.fromarray(array.astype(np.uint8)).convert("RGB")
    inner = size - 2 * width if border else size
    resample = Image.Resampling.NEAREST if max(pil.size) < inner else Image.Resampling.BICUBIC
    pil = ImageOps.fit(pil, (inner, inner), method=resample)
    if border:
        pil = ImageOps.expand(pil, border=width, fill=border)
    if badge:
        from PIL import ImageDraw, ImageFont

        draw = ImageDraw.Draw(pil)
        font = ImageFont.load_default(size=max(9, size // 7))
        height = max(11, size // 5)
        left, top, right, bottom = draw.textbbox((0, 0), badge, font=font)
        edge = size - (width if border else 0)  # inside the frame, bottom right
        x0, y0 = edge - (right - left) - 8, edge - height
        draw.rectangle((x0, y0, edge - 1, edge - 1), fill=badge_color)
        draw.text((x0 + 4, y0 + (height - (bottom - top)) / 2 - top), badge, fill="white", font=font)
    return pil


# ------------------------------------------------------------------------------------------ explorer
class Explorer:
    """Gallery, embeddings, indexes and curves of one model suite, with per-query retrieval on demand.

    Args:
        suite: a :class:`~backfill.suite.ModelSuite` (anything with its ``embed``, ``predict``, ``old``,
            ``class_names`` and ``old_classes`` works).
        gallery: the gallery images and labels (the dataset's test split).
        n_points: curve points over [0, 1] (21: p = 0, 0.05, ..., 1, method.md's grid).
        curve_queries: how many gallery images (seeded sample) serve as leave-one-out queries for the
            curves; None or >= the gallery size: all of them.
        seed: seed of the random order and of the curve-query sample.
        cache_dir: directory for the on-disk cache of gallery embeddings and curves (None: memory only).
            Entries are keyed by a hash of what they are computed from, so changed weights or data never
            reuse stale results.
        batch_size: images per forward pass when embedding the gallery.
    """

    def __init__(self, suite, gallery: ImageDataset, *, n_points: int = 21, curve_queries: int | None = 2000,
                 seed: int = 0, cache_dir: str | Path | None = None, batch_size: int = 500) -> None:
        if len(gallery) < 2:
            raise ValueError(f"the gallery needs at least 2 images, got {len(gallery)}")
        if int(n_points) != n_points or n_points < 2:
            raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
        if curve_queries is not None and curve_queries < 1:
            raise ValueError(f"curve_queries must be positive or None, got {curve_queries}")
        self.suite = suite
        self.gallery = gallery
        self.n_points = int(n_points)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        n = len(gallery)
        if curve_queries is None or curve_queries >= n:
            self.curve_query_ids = np.arange(n, dtype=np.int64)
        else:
            rng = np.random.default_rng(self.seed)
            picked = rng.choice(n, size=int(curve_queries), replace=False)
            self.curve_query_ids = np.sort(picked).astype(np.int64)
        self.points = curve_points(self.n_points)
        # Memoised results, one lock per key: a long computation (a curve) blocks only the callers that
        # need that very result, not another session's slider moves on results already computed.
        self._memo: dict[tuple, object] = {}
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._digests: dict[str, str] = {}
        self._methods = self._available_methods()

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_directory(cls, models_dir: str | Path, data_root: str | Path | None = None, *,
                       per_class: int | None = None, **kwargs) -> Explorer:
        """Load the suite in ``models_dir`` and the test split of its dataset as the gallery.

        ``data_root`` goes to :func:`backfill.data.load_dataset` (None: its default places, e.g. the
        bundled Fashion-MNIST test split). ``per_class`` keeps at most that many gallery images per class
        (deterministic), for quick runs and tests. Other keyword arguments go to :class:`Explorer`.
        Raises ``FileNotFoundError`` (missing directory or data) or ``ValueError`` (a damaged or
        inconsistent suite) with the loaders' messages.
        """
        from backfill.suite import ModelSuite

        suite = ModelSuite.load(models_dir)
        gallery = load_dataset(suite.dataset, "test", root=data_root)
        if per_class:
            gallery = subsample_per_class(gallery, int(per_class))
        return cls(suite, gallery, **kwargs)

    # ----------------------------------------------------------------------------- methods
    def _available_methods(self) -> dict:
        """name -> Method for the methods whose arrays this suite makes (probed on one gallery image)."""
        from backfill.suite import METHODS

        probe = self.suite.embed(self.gallery.images[:1], self.gallery.labels[:1])
        out = {}
        for m in METHODS:
            emb = probe.get(m.variant)
            strategy = get_strategy(m.strategy)
            if emb is not None and set(strategy.required_arrays) <= set(emb.available):
                out[m.name] = m
        return out

    @property
    def methods(self) -> list:
        """The suite's :data:`backfill.suite.METHODS` that its models can serve, in display order."""
        return list(self._methods.values())

    def method(self, name: str):
        """The :class:`~backfill.suite.Method` called ``name``; ``ValueError`` when unknown or unavailable."""
        if name not in self._methods:
            raise ValueError(f"method {name!r} is not available with this suite; "
                             f"available: {list(self._methods)}")
        return self._methods[name]

    @property
    def class_names(self) -> list[str]:
        return list(self.gallery.class_names)

    @property
    def step_percent(self) -> float:
        """Distance between curve points in percent (the slider step)."""
        return 100.0 / (self.n_points - 1)

    # ----------------------------------------------------------------------------- heavy, memoised
    def is_ready(self, order: str, methods: Sequence[str]) -> bool:
        """True when the embeddings and the curves of ``methods`` and the references under ``order`` exist."""
        needed = set(methods) | set(REFERENCE_METHODS)
        return ("embeddings",) in self._memo and all(("curve", order, m) in self._memo for m in needed)

    def prepare(self, order: str, methods: Sequence[str], progress: ProgressFn | None = None) -> None:
        """Compute what ``order`` and ``methods`` need (plus the references), reporting ``progress``."""
        report = progress or (lambda fraction, message: None)
        self.embeddings(progress=lambda f, msg: report(0.4 * f, msg))
        todo = [m for m in dict.fromkeys([*REFERENCE_METHODS, *methods]) if ("curve", order, m) not in self._memo]
        for i, name in enumerate(todo):
            report(0.4 + 0.6 * i / len(todo), f"Evaluating the {self.label(name)} curve "
                                              f"({len(self.curve_query_ids):,} queries, {order} order)")
            self.curve(name, order)
        report(1.0, "Ready")

    def embeddings(self, progress: ProgressFn | None = None) -> dict[str, Embeddings]:
        """variant -> gallery :class:`~backfill.embeddings.Embeddings` (``base``, ``full``, ``full_rho``)."""
        def compute() -> dict[str, Embeddings]:
            key = self._hash("embeddings", self._suite_fingerprint(), self.gallery.images, self.gallery.labels)
            embeddings = _unflatten(self._cached(key, lambda: self._embed_gallery(progress)), self.gallery.labels)
            for variant, emb in embeddings.items():
                self._digests[variant] = self._hash(*(emb.array(a) for a in emb.available))
            return embeddings

        return self._memoised(("embeddings",), compute)

    def _memoised(self, key: tuple, compute: Callable[[], object]):
        """``compute()`` once per ``key``; concurrent callers of the same key wait for the first one."""
        if key in self._memo:
            return self._memo[key]
        with self._locks_lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    def _embed_gallery(self, progress: ProgressFn | None) -> dict[str, np.ndarray]:
        n = len(self.gallery)
        if self.suite.uses_pretrained_backbones:
            # One pass over the whole gallery: each frozen backbone's features are computed once and cached
            # on disk (keyed by weights and images), then every head runs on them in a second or two.
            def report(done: int, total: int, backbone: str) -> None:
                if progress:
                    progress(done / total, f"{backbone} features of the gallery (once, then cached): "
                                           f"{done:,}/{total:,} images")

            embedded = self.suite.embed(self.gallery.images, self.gallery.labels, on_progress=report)
            return {f"{variant}/{array}": emb.array(array) for variant, emb in embedded.items()
                    for array in emb.available}
        parts: list[dict[str, Embeddings]] = []
        for start in range(0, n, self.batch_size):
            if progress:
                progress(start / n, f"Embedding the gallery: {start:,}/{n:,} images")
            stop = start + self.batch_size
            parts.append(self.suite.embed(self.gallery.images[start:stop], self.gallery.labels[start:stop]))
        if progress:
            progress(1.0, f"Embedded {n:,} gallery images")
        return {f"{variant}/{array}": np.concatenate([p[variant].array(array) for p in parts])
                for variant, emb in parts[0].items() for array in emb.available}

    def order(self, name: str) -> np.ndarray:
        """The backfill order ``name`` (one of :data:`ORDERS`): int64 ``(N,)`` permutation of the gallery."""
        if name not in ORDERS:
            raise ValueError(f"unknown order {name!r}; expected one of {ORDERS}")
        return self._memoised(("order", name), lambda: self._make_order(name))

    def _make_order(self, name: str) -> np.ndarray:
        if name == "random":
            return random_order(len(self.gallery), seed=self.seed)
        base = self.embeddings()["base"]
        if name == "deployable":
            return order_by_score(self.suite.old_entropy_priority(base.old))
        return order_by_score(oracle_priority(base.old, base.new, self.gallery.labels))

    def index(self, variant: str, order: str) -> BackfillIndex:
        """The :class:`~backfill.indexing.BackfillIndex` of embedding ``variant`` stored in ``order``."""
        return self._memoised(("index", variant, order),
                              lambda: BackfillIndex(self.embeddings()[variant], self.order(order)))

    def curve(self, method: str, order: str) -> CurveData:
        """mAP / top-1 / top-5 curve of ``method`` under ``order`` over :attr:`points` (see module notes)."""
        m = self.method(method)

        def evaluate() -> dict[str, np.ndarray]:
            gallery, ids, order_ids = self.embeddings()[m.variant], self.curve_query_ids, self.order(order)
            if len(ids) == gallery.n:
                curve = evaluate_curve(m.strategy, gallery, gallery, order_ids, self.points, leave_one_out=True)
            else:
                curve = evaluate_curve(m.strategy, gallery.subset(ids), gallery, order_ids, self.points,
                                       exclude=ids)
            return {metric: np.asarray(getattr(curve, metric), np.float64) for metric in METRICS}

        def compute() -> CurveData:
            self.embeddings()  # fills the digests
            disk_key = self._hash("curve", backfill.__version__, m.strategy, self._digests[m.variant],
                                  self.order(order), self.curve_query_ids, self.points)
            return CurveData(method, order, self.points, self._cached(disk_key, evaluate))

        return self._memoised(("curve", order, method), compute)

    # ----------------------------------------------------------------------------- queries
    def sample_ids(self, count: int = 10) -> np.ndarray:
        """Gallery ids of ``count`` one-click sample queries: the first image of evenly spread classes."""
        classes = np.unique(self.gallery.labels)
        chosen = classes[np.linspace(0, len(classes) - 1, min(count, len(classes))).round().astype(int)]
        return np.array([np.flatnonzero(self.gallery.labels == c)[0] for c in chosen], dtype=np.int64)

    def gallery_query(self, gallery_id: int) -> Query:
        """Gallery image ``gallery_id`` as a query: class known, left out of its own ranking."""
        n = len(self.gallery)
        if int(gallery_id) != gallery_id or not 0 <= gallery_id < n:
            raise ValueError(f"gallery id must be an integer in [0, {n}), got {gallery_id!r}")
        i = int(gallery_id)
        rows = {variant: emb.subset(np.array([i])) for variant, emb in self.embeddings().items()}
        label = int(self.gallery.labels[i])
        return Query(f"sample:{i}", f"#{i} {self.gallery.class_names[label]}", self.gallery.images[i], rows,
                     label=label, gallery_id=i)

    def upload_queries(self, files: Sequence[tuple[str, bytes]]) -> tuple[list[Query], list[str]]:
        """Embed uploaded files ``(name, bytes)``; returns ``(queries, error messages)``.

        Each bad file gives one message naming it and the reason (see :func:`read_upload`); the good ones
        are embedded in one batch and get the new model's predicted class.
        """
        images, names, errors = [], [], []
        for name, data in files:
            try:
                images.append(read_upload(name, data))
                names.append(name)
            except UploadError as exc:
                errors.append(str(exc))
        if not images:
            return [], errors
        embedded = self.suite.embed(images)
        predicted, probs = self.suite.predict(images)
        queries = []
        for i, (name, image) in enumerate(zip(names, images, strict=True)):
            rows = {variant: emb.subset(np.array([i])) for variant, emb in embedded.items()}
            queries.append(Query(f"upload:{i}:{name}", name, display_array(image), rows,
                                 predicted=int(predicted[i]), confidence=float(probs[i].max())))
        return queries, errors

    # ----------------------------------------------------------------------------- per interaction
    def search(self, query: Query, method: str, ratio: float, order: str, k: int = 10) -> MethodResult:
        """Top-``k`` of ``query`` under ``method`` with ``ratio`` of the gallery backfilled in ``order``.

        The AP is the engine's (:func:`backfill.evaluation.evaluate_curve` at this one ratio): over the full
        ranking, unreachable relevant items count as never retrieved.
        """
        m = self.method(method)
        gallery = self.embeddings()[m.variant]
        exclude = np.array([-1 if query.gallery_id is None else query.gallery_id], dtype=np.int64)
        found = self.index(m.variant, order).search(m.strategy, query.embeddings[m.variant], ratio, k,
                                                    exclude=exclude)
        ap = None
        if query.label is not None:
            labelled = query.embeddings[m.variant]
            labelled = Embeddings(np.array([query.label]),
                                  **{a: labelled.array(a) for a in labelled.available})
            curve = evaluate_curve(m.strategy, labelled, gallery, self.order(order), [ratio], exclude=exclude)
            ap = None if not curve.valid[0] else float(curve.ap[0, 0])
        ids, scores, spaces = found.ids[0], found.scores[0], found.spaces[0]
        hits = tuple(
            Hit(rank=r + 1, gallery_id=int(ids[r]), score=float(scores[r]), space=SPACE_NAMES[int(spaces[r])],
                label=int(self.gallery.labels[ids[r]]),
                correct=None if query.label is None else bool(self.gallery.labels[ids[r]] == query.label))
            for r in range(len(ids)) if ids[r] >= 0
        )
        u_side, _ = get_strategy(m.strategy).sides(ratio)
        reachable = gallery.n if u_side is not None else num_backfilled(ratio, gallery.n)
        if query.gallery_id is not None and (u_side is not None or query.gallery_id in
                                             self.order(order)[:reachable]):
            reachable -= 1
        return MethodResult(method, self.label(method), hits, ap, int(reachable))

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

    def summary(self, methods: Sequence[str], order: str, ratio: float) -> list[dict]:
        """One dict per method: ``map`` and ``top1`` at ``ratio`` (nearest curve point), ``auc_map``,
        ``auc_top1``, ``relative_gain`` = (AUC-mAP - old/old) / (new/new - old/old) (method.md) and
        ``vs_naive`` = its mAP minus new-partial's at ``ratio``. Values are fractions in [0, 1]."""
        point = self.point_index(ratio)
        refs = self.references(order)["map"]
        naive = self.curve("new_partial", order).values["map"][point]
        rows = []
        for name in methods:
            values = self.curve(name, order).values
            auc = area_under_curve(values["map"])
            rows.append({
                "method": name,
                "label": self.label(name),
                "map": float(values["map"][point]),
                "top1": float(values["top1"][point]),
                "auc_map": auc,
                "auc_top1": area_under_curve(values["top1"]),
                "relative_gain": relative_gain(auc, refs["old/old"], refs["new/new"]),
                "vs_naive": float(values["map"][point] - naive),
            })
        return rows

    def hit_thumbnail(self, hit: Hit, size: int = 80) -> Image.Image:
        """Thumbnail of a hit: framed green (correct), red (wrong) or grey (query class unknown), with a
        badge "old"/"new" (orange/blue) for the space its score came from."""
        return thumbnail(self.gallery.images[hit.gallery_id], size=size, border=CORRECT_COLORS[hit.correct],
                         badge=hit.space, badge_color=SPACE_COLORS[hit.space])

    def label(self, method: str) -> str:
        """Short display name of ``method`` (:data:`DISPLAY_LABELS`, else the suite's label)."""
        return DISPLAY_LABELS[method] if method in DISPLAY_LABELS else self.method(method).label

    # ----------------------------------------------------------------------------- teaching data
    def projection(self, classes: Sequence[int] | None = None, per_class: int = 150,
                   seed: int = 0) -> dict[str, np.ndarray]:
        """2-D PCA projections of the same gallery images in the old and in the new space.

        ``classes`` default to two classes the old model saw and two it never saw. Returns ``old_xy`` and
        ``new_xy`` ``(n, 2)`` float32, ``labels`` ``(n,)`` int64 and ``seen`` (the old model's classes).
        Each space gets its own PCA: the two spaces are unrelated coordinate systems.
        """
        base = self.embeddings()["base"]
        seen = np.asarray(getattr(self.suite, "old_classes", None) or [], dtype=np.int64)
        if classes is None:
            present = np.unique(self.gallery.labels)
            classes = [*np.intersect1d(present, seen)[:2], *np.setdiff1d(present, seen)[:2]]
        rng = np.random.default_rng(seed)
        picked = np.concatenate([rng.permutation(np.flatnonzero(self.gallery.labels == c))[:per_class]
                                 for c in classes])
        return {"old_xy": _pca2(base.old[picked]), "new_xy": _pca2(base.new[picked]),
                "labels": self.gallery.labels[picked], "seen": seen}

    def score_distributions(self, n_queries: int = 300, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Scores of same-class and different-class pairs in both spaces, per merge method (teaching).

        For ``n_queries`` random gallery queries against the whole gallery (self-pairs dropped), the old
        space is scored as each method scores un-backfilled items (rank merge: the old query; RT merge:
        psi_regression(new query); full: psi_mc(new query)) and the new space as new query x new gallery.
        Returns panel title -> series name -> 1-D float32 scores (at most 20,000 per series).
        """
        embeddings = self.embeddings()
        rng = np.random.default_rng(seed)
        labels = self.gallery.labels
        q = rng.choice(len(labels), size=min(n_queries, len(labels)), replace=False)
        same = labels[q][:, None] == labels[None, :]
        not_self = np.ones_like(same)
        not_self[np.arange(len(q)), q] = False
        panels = {}
        for title, variant, query_array in (("rank merge: old query", "base", "old"),
                                            ("RT merge: regression ψ", "base", "transformed"),
                                            ("full: metric-compatible ψ", "full", "transformed")):
            emb = embeddings.get(variant)
            if emb is None or query_array not in emb.available:
                continue
            old_scores = emb.array(query_array)[q] @ emb.old.T
            new_scores = emb.new[q] @ emb.new.T
            panels[title] = {
                "old space, same class": _sample(old_scores[same & not_self], rng),
                "old space, other class (neg)": _sample(old_scores[~same], rng),
                "new space, same class": _sample(new_scores[same & not_self], rng),
                "new space, other class (neg)": _sample(new_scores[~same], rng),
            }
        return panels

    # ----------------------------------------------------------------------------- export
    def results_csv(self, shown: Sequence[tuple[Query, Sequence[MethodResult]]], ratio: float,
                    order: str) -> str:
        """CSV text of the shown results: one row per (query, method, rank)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["query", "query_class", "predicted_class", "backfilled_percent", "order", "method",
                         "query_ap", "rank", "gallery_id", "class", "score", "space", "correct"])
        names = self.gallery.class_names
        for query, results in shown:
            query_class = "" if query.label is None else names[query.label]
            predicted = "" if query.predicted is None else names[query.predicted]
            for result in results:
                ap = "" if result.ap is None else f"{result.ap:.6f}"
                for hit in result.hits:
                    writer.writerow([
                        query.name, query_class, predicted, f"{ratio * 100:g}", order, result.method, ap,
                        hit.rank, hit.gallery_id, names[hit.label], f"{hit.score:.6f}", hit.space,
                        "" if hit.correct is None else int(hit.correct),
                    ])
        return buffer.getvalue()

    # ----------------------------------------------------------------------------- disk cache
    def _suite_fingerprint(self) -> str:
        cards = getattr(self.suite, "cards", {}) or {}
        return "|".join(f"{k}:{cards[k].get('weights_sha256')}" for k in sorted(cards))

    @staticmethod
    def _hash(*parts) -> str:
        digest = hashlib.sha256()
        for part in parts:
            is_array = isinstance(part, np.ndarray)
            data = np.ascontiguousarray(part).tobytes() if is_array else str(part).encode()
            digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest()[:32]

    def _cached(self, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """``compute()`` (a dict of arrays), read from / written to ``cache_dir/<key>.npz`` when caching."""
        if self.cache_dir is None:
            return compute()
        path = self.cache_dir / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {name: data[name] for name in data.files}
                os.utime(path)  # recently used: pruned last
                return arrays
            except (OSError, ValueError, EOFError):
                pass  # a damaged cache entry is recomputed and overwritten
        result = compute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
            np.savez(tmp, **{name.replace("/", "__"): v for name, v in result.items()})
            os.replace(tmp, path)
            _prune(self.cache_dir, MAX_CACHE_BYTES)
        except OSError:
            pass  # a read-only or full disk only costs the speed-up
        return dict(result)


def _prune(directory: Path, max_bytes: int) -> None:
    """Delete the least recently used ``*.npz`` entries of ``directory`` until it holds ``max_bytes``."""
    entries = sorted(directory.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for entry in entries:
        total += entry.stat().st_size
        if total > max_bytes:
            entry.unlink(missing_ok=True)


def _unflatten(arrays: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Embeddings]:
    """``{"variant/array" or "variant__array": ndarray}`` -> variant -> Embeddings (the cache's layout)."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        variant, array = name.replace("__", "/").split("/")
        grouped.setdefault(variant, {})[array] = value
    return {variant: Embeddings(labels, **{a: parts[a] for a in ARRAY_NAMES if a in parts})
            for variant, parts in grouped.items()}


def cross_space_order(panel: dict[str, np.ndarray]) -> float:
    """How well one score scale serves both spaces: the probability that a same-class pair scored in one
    space outscores an other-class pair scored in the *other* space, averaged over the two directions
    (old positive vs new negative, new positive vs old negative). 1.0 = a merged ranking never puts a
    cross-space negative first; 0.5 = chance. ``panel`` is one panel of :meth:`Explorer.score_distributions`.
    """
    def above(positives: np.ndarray, negatives: np.ndarray) -> float:
        # Share of (positive, negative) pairs with positive > negative (ties count half), by sorting.
        negatives = np.sort(negatives)
        below = np.searchsorted(negatives, positives, side="left")
        ties = np.searchsorted(negatives, positives, side="right") - below
        return float((below + 0.5 * ties).mean() / len(negatives))

    return 0.5 * (above(panel["old space, same class"], panel["new space, other class (neg)"])
                  + above(panel["new space, same class"], panel["old space, other class (neg)"]))


def _pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components of ``x`` ``(n, d)``, float32 ``(n, 2)``."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.ascontiguousarray(centred @ vt[:2].T, dtype=np.float32)


def _sample(values: np.ndarray, rng: np.random.Generator, limit: int = 20_000) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32).ravel()
    return values if values.size <= limit else rng.choice(values, size=limit, replace=False)
