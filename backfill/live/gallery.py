"""Loading a dataset split into a gallery store, checking a suite against it, exporting it."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from backfill.live.store import ORDERS, GalleryStore, StoreError

__all__ = ["load_gallery", "check_suite", "model_tag", "embed_new", "embed_new_input", "encode_image", "export_npz"]


def model_tag(card: dict[str, Any]) -> str:
    """The tag written beside each new vector: ``<weights file>@<sha256 prefix>``."""
    return f"{card.get('weights_file', 'new.pt')}@{str(card.get('weights_sha256', ''))[:12]}"


def encode_image(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 image ``(H, W)`` or ``(H, W, C)`` (lossless: decodes to the same pixels)."""
    arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def embed_new(suite: Any, images: list[Any]) -> np.ndarray:
    """The new model's embeddings ``(n, d_n)`` float32 of images (bytes, PIL, paths...), through the one
    preprocessing path of uploads (:func:`backfill.images.preprocess`); the same vectors as
    ``suite.embed_arrays(images)["new"]`` without running the other models."""
    from backfill.images import preprocess

    return embed_new_input(suite, preprocess(images, suite.dataset))


@torch.inference_mode()
def embed_new_input(suite: Any, x: torch.Tensor) -> np.ndarray:
    """The new model's embeddings ``(n, d_n)`` float32 of a batch already preprocessed (``(n, C, H, W)``,
    from :func:`backfill.images.preprocess`): the model's share of :func:`embed_new`."""
    return np.ascontiguousarray(suite.new.embed(x.to(suite.device)).float().cpu().numpy(), dtype=np.float32)


def check_suite(store: GalleryStore, suite: Any) -> dict[str, Any]:
    """Raise :class:`StoreError` when ``suite`` does not fit the store's gallery; return the store's meta.

    Checks the dims of both spaces, and that the suite's old model is the one that made the stored old
    vectors (its psi and old-space queries only make sense against those).
    """
    meta = store.require_loaded()
    d_old, d_new = suite.cards["old"]["embedding_dim"], suite.cards["new"]["embedding_dim"]
    if (d_old, d_new) != (meta["d_old"], meta["d_new"]):
        raise StoreError(f"the suite's models embed into {d_old} (old) / {d_new} (new) dims, but the store holds "
                         f"{meta['d_old']} / {meta['d_new']}-dim vectors: this gallery was made with another suite")
    sha = suite.cards["old"].get("weights_sha256")
    if meta.get("old_model_sha256") and sha != meta["old_model_sha256"]:
        raise StoreError(f"the store's old vectors were made by old model {meta['old_model_sha256'][:12]}..., not by "
                         f"this suite's old.pt ({str(sha)[:12]}...)")
    return meta


def load_gallery(store: GalleryStore, suite: Any, *, dataset: str, split: str = "test",
                 data: str | os.PathLike | None = None, limit: int | None = None, replace: bool = False,
                 batch_size: int = 512, seed: int = 0, progress: bool = True) -> int:
    """Create the gallery from a dataset split: old vectors, the priorities of the deployable orders (old
    entropy, and the predicted gain when the suite has a gain predictor), a seeded random order and the images
    (PNG) the job will re-embed. Refused when a gallery exists, unless ``replace``. The meta's ``orders`` lists
    the orders the gallery can be backfilled in.

    Returns the number of items loaded.
    """
    from backfill.datasets import load_dataset
    from backfill.ordering import random_order

    if suite.dataset != dataset:
        raise StoreError(f"the suite is for {suite.dataset!r}, not {dataset!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be positive, got {limit}")
    ds = load_dataset(dataset, split, data)
    n = len(ds) if limit is None else min(limit, len(ds))
    images, labels = ds.images[:n], ds.labels[:n]
    cards = suite.cards
    meta = {"dataset": dataset, "split": split, "suite": str(getattr(suite, "directory", "")),
            "old_model_sha256": cards["old"].get("weights_sha256"),
            "new_model": model_tag(cards["new"])}
    predictor = getattr(suite, "gain_predictor", None)
    meta["orders"] = [order for order in ORDERS if order != "predicted_gain" or predictor is not None]
    # Refuse early, before spending minutes on embeddings.
    store.create(d_old=cards["old"]["embedding_dim"], d_new=cards["new"]["embedding_dim"], meta=meta,
                 replace=replace)
    from tqdm.auto import tqdm

    rank = np.empty(n, dtype=np.int64)
    rank[random_order(n, seed=seed)] = np.arange(n)
    for start in tqdm(range(0, n, batch_size), desc="load gallery", unit="batch", disable=not progress):
        stop = min(start + batch_size, n)
        batch = images[start:stop]
        old = suite.embed_arrays(batch, batch_size=batch_size)["old"]
        store.add_items(ids=np.arange(start, stop), labels=labels[start:stop],
                        refs=[f"{dataset}/{split}/{i}" for i in range(start, stop)],
                        images=[encode_image(im) for im in batch], old=old,
                        priority=suite.old_entropy_priority(old), random_rank=rank[start:stop],
                        predicted_gain=None if predictor is None else predictor.priority(old))
    store.set_meta("loaded", True)  # an interrupted load is replaced by the next one without --replace
    return n


def export_npz(store: GalleryStore, out: str | os.PathLike) -> dict[str, np.ndarray]:
    """Write the store's gallery to ``out`` (``ids``, ``labels``, ``old``, ``new`` NaN where pending,
    ``backfilled``); returns the arrays."""
    arrays = store.export()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return arrays
