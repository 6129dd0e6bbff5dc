"""Queries and per-query search: what the page computes on every slider move.

A :class:`Query` is one image embedded in every variant of the suite: a gallery sample (class known, left
out of its own ranking) or an upload (class unknown unless the user states it). :func:`search` gives its
top-k under one method at one backfill ratio, each hit with its score and the :class:`~backfill.strategies.Space`
it was scored in, and the query's AP over the full ranking (the engine's evaluation at that one ratio).
Uploads are at most :data:`MAX_UPLOAD_MB` MB and go through :func:`backfill.images.load_image` /
``preprocess``, the path every image takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from backfill.datasets import get_spec
from backfill.embeddings import Embeddings
from backfill.evaluation import evaluate_curve
from backfill.explorer.session import Explorer
from backfill.images import ImageLoadError, load_image, resize_to_model, to_model_mode
from backfill.ordering import num_backfilled
from backfill.strategies import Space, get_strategy

__all__ = ["MAX_UPLOAD_MB", "UPLOAD_TYPES", "Hit", "MethodResult", "Query", "UploadError", "gallery_query",
           "model_view", "read_upload", "search", "upload_queries"]

#: Largest accepted upload in megabytes (the app passes it to ``st.file_uploader(max_upload_size=...)`` too).
MAX_UPLOAD_MB = 10
#: File types the uploader accepts (animated GIF/WebP: the first frame is used).
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif")


class UploadError(ValueError):
    """An uploaded file cannot be used as a query; the message names the file and the reason."""


@dataclass(frozen=True)
class Query:
    """One query image, embedded in every variant of the suite.

    Attributes
    ----------
    key : ``"sample:<gallery id>"`` or ``"upload:<position>:<file name>"``.
    name : display name.
    image : uint8 ``(H, W[, C])`` image as given (the dataset image, or the decoded upload in RGB).
    model_image : uint8 image as the models see it (their resolution and colour mode).
    embeddings : variant -> one-row :class:`~backfill.embeddings.Embeddings`.
    label : known class id (a sample, or the class a user stated for an upload), else None.
    gallery_id : position of the query in the gallery (left out of its own ranking), else None.
    predicted, confidence : the new model's predicted class id and its probability (uploads).
    """

    key: str
    name: str
    image: np.ndarray
    model_image: np.ndarray
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
    """One retrieved gallery item: 1-based ``rank``, cosine ``score``, the ``space`` it was scored in, its
    class id, and whether it has the query's class (None when the query's class is unknown)."""

    rank: int
    gallery_id: int
    score: float
    space: Space
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


def read_upload(name: str, data: bytes, max_mb: float = MAX_UPLOAD_MB) -> Image.Image:
    """Decode an uploaded file into a PIL image, or raise :class:`UploadError` naming file and reason.

    Rejects empty files, files over ``max_mb`` MB and anything :func:`backfill.images.load_image` rejects
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


def model_view(image: Image.Image, dataset: str) -> np.ndarray:
    """``image`` as the models of ``dataset`` see it: uint8, their size and colour mode (e.g. 28x28 grey)."""
    spec = get_spec(dataset)
    return np.asarray(resize_to_model(to_model_mode(image, spec.mode), spec.size), dtype=np.uint8)


def gallery_query(session: Explorer, gallery_id: int) -> Query:
    """Gallery image ``gallery_id`` as a query: class known, left out of its own ranking."""
    n = session.gallery_size
    if int(gallery_id) != gallery_id or not 0 <= gallery_id < n:
        raise ValueError(f"gallery id must be an integer in [0, {n}), got {gallery_id!r}")
    i = int(gallery_id)
    rows = {variant: emb.subset(np.array([i])) for variant, emb in session.embeddings().items()}
    label = int(session.gallery.labels[i])
    image = session.image(i)
    return Query(f"sample:{i}", f"#{i} {session.class_name(i)}", image, image, rows, label=label, gallery_id=i)


def upload_queries(session: Explorer, files: Sequence[tuple[str, bytes]]) -> tuple[list[Query], list[str]]:
    """Embed uploaded files ``(name, bytes)``; returns ``(queries, error messages)``.

    Each bad file gives one message naming it and the reason (see :func:`read_upload`); the good ones are
    embedded in one batch and get the new model's predicted class.
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
    embedded = session.suite.embed(images)
    predicted, probs = session.suite.predict(images)
    queries = []
    for i, (name, image) in enumerate(zip(names, images, strict=True)):
        rows = {variant: emb.subset(np.array([i])) for variant, emb in embedded.items()}
        shown = np.asarray(to_model_mode(image, "RGB"), dtype=np.uint8)
        queries.append(Query(f"upload:{i}:{name}", name, shown, model_view(image, session.dataset), rows,
                             predicted=int(predicted[i]), confidence=float(probs[i].max())))
    return queries, errors


def search(session: Explorer, query: Query, method: str, ratio: float, order: str, k: int = 10) -> MethodResult:
    """Top-``k`` of ``query`` under ``method`` with ``ratio`` of the gallery backfilled in ``order``.

    The AP is the engine's (:func:`backfill.evaluation.evaluate_curve` at this one ratio): over the full
    ranking, unreachable relevant items count as never retrieved.
    """
    m = session.method(method)
    gallery = session.embeddings()[m.variant]
    order_ids = session.order(order)
    exclude = np.array([-1 if query.gallery_id is None else query.gallery_id], dtype=np.int64)
    found = session.index(m.variant, order).search(m.strategy, query.embeddings[m.variant], ratio, k=k,
                                                   exclude=exclude)
    ap = None
    if query.label is not None:
        row = query.embeddings[m.variant]
        labelled = Embeddings(np.array([query.label]), **{a: row.array(a) for a in row.available})
        curve = evaluate_curve(m.strategy, labelled, gallery, order_ids, points=[ratio], exclude=exclude)
        ap = float(curve.ap[0, 0]) if curve.valid[0] else None
    labels = session.gallery.labels
    ids, scores, spaces = found.ids[0], found.scores[0], found.spaces[0]
    hits = tuple(
        Hit(rank=r + 1, gallery_id=int(ids[r]), score=float(scores[r]), space=Space(int(spaces[r])),
            label=int(labels[ids[r]]),
            correct=None if query.label is None else bool(labels[ids[r]] == query.label))
        for r in range(len(ids)) if ids[r] >= 0
    )
    return MethodResult(method, m.label, hits, ap, _n_reachable(m.strategy, ratio, order_ids, query.gallery_id))


def _n_reachable(strategy: str, ratio: float, order: np.ndarray, excluded: int | None) -> int:
    """Gallery items ``strategy`` can rank at ``ratio``: all of them when it scores un-backfilled items,
    else the backfilled prefix of ``order``; minus the query's own item when that is among them."""
    u_side, _ = get_strategy(strategy).sides(ratio)
    reachable = len(order) if u_side is not None else num_backfilled(ratio, len(order))
    if excluded is not None and (u_side is not None or excluded in order[:reachable]):
        reachable -= 1
    return int(reachable)
