"""The ``predicted_gain`` backfill order: learn, on training images, which items the new model improves most.

The oracle order (:func:`backfill.ordering.oracle_priority`) backfills first the items whose new embedding
sits in its class much better than the old one: ``margin_new - margin_old``, where a margin is the cosine to
the own-class centroid minus the highest cosine to another class's centroid. A service cannot compute that
for its gallery (it needs the new embeddings and the labels), but it can for its training images: both
models and the labels are there before the backfill starts. :class:`GainPredictor` regresses that margin
gain on the old embedding alone, so the gallery's stored old embeddings are enough to rank it.

The training rows are mirrored and randomly cropped views of the training images (``backfill.augmentation``),
not the clean images: the heads fit those almost perfectly, so their margins say little about unseen images.
On CIFAR-100 this order passes on more of the gain than the old classifier's entropy (``docs/results.md``).

:func:`train_gain_predictor` fits one for an old/new checkpoint pair and writes it as a checkpoint with its card
(``backfill train gain-predictor``); a suite holds it as ``gain_predictor.pt``, so the app and the live job
order a gallery with it without the training images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backfill._validation import check_matrix
from backfill.checkpoints import save_checkpoint
from backfill.datasets import load_dataset
from backfill.inference import embed_dataset
from backfill.ordering import oracle_priority
from backfill.training import configure_threads
from backfill.transform_training import cache_features, load_old_and_new, model_record

__all__ = ["GainPredictor", "fit_gain_predictor", "train_gain_predictor", "GAIN_PREDICTOR_VIEW"]

#: The views of the train images the predictor learns from (``backfill.augmentation.parse_views``), one row per
#: image and view: mirrored and cropped ones are embedded as loosely as unseen images
#: (``benchmarks/sweep_gain_predictor.py``).
GAIN_PREDICTOR_VIEW = "flip+crop"


class GainPredictor(nn.Module):
    """``Linear(d_old, hidden) - ReLU - Linear(hidden, 1)``: an old embedding -> its predicted margin gain
    (standardised over the training rows; only the order of the predictions matters)."""

    def __init__(self, d_old: int, hidden: int = 256) -> None:
        super().__init__()
        if d_old < 1 or hidden < 1:
            raise ValueError(f"d_old and hidden must be >= 1, got {d_old} and {hidden}")
        self.spec = {"arch": "gain", "d_old": d_old, "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(d_old, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, old: torch.Tensor) -> torch.Tensor:
        return self.net(old).squeeze(1)

    @torch.inference_mode()
    def priority(self, old: np.ndarray) -> np.ndarray:
        """Backfill priority ``(n,)`` float64 of stored old embeddings ``(n, d_old)``: the largest predicted
        gain first once fed to :func:`backfill.ordering.order_by_score`."""
        # No dropout or batch norm: train and eval mode compute the same function.
        x = torch.from_numpy(np.ascontiguousarray(check_matrix(old, "old")))
        return self(x.to(self.net[0].weight.device)).double().cpu().numpy()


def fit_gain_predictor(old: np.ndarray, new: np.ndarray, labels: np.ndarray, *, hidden: int = 256,
                       epochs: int = 20, batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> GainPredictor:
    """Fit a :class:`GainPredictor` on training images' old ``(n, d_old)`` and new ``(n, d_new)`` embeddings
    and labels ``(n,)``: mean squared error to their standardised :func:`oracle_priority` (centroids of these
    rows), AdamW (weight decay 1e-4), seeded."""
    target = oracle_priority(old, new, labels)
    spread = target.std()
    if not spread > 0:
        raise ValueError("the training rows' margin gains are all equal: nothing to learn an order from")
    x = torch.from_numpy(np.ascontiguousarray(check_matrix(old, "old")))
    y = torch.from_numpy(((target - target.mean()) / spread).astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GainPredictor(x.shape[1], hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two ``(n,)`` vectors (no ties expected: float scores)."""
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def train_gain_predictor(
    old: str | os.PathLike, new: str | os.PathLike, out: str | os.PathLike, *, dataset: str | None = None,
    data: str | os.PathLike | None = None, download: bool = False, view: str = GAIN_PREDICTOR_VIEW,
    hidden: int = 256, epochs: int = 20, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
    threads: int | None = None, command: str | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Fit a :class:`GainPredictor` for the old/new checkpoints ``old``/``new`` on ``view`` of the dataset's
    train split and write it to ``out`` (kind ``gain_predictor``) with its card, which records the checkpoints
    it was fitted against (checked by ``ModelSuite.load``). The card's metrics: the training rows' mean squared
    error (standardised target) and, on the test split, the rank correlation of the predicted gain with the
    oracle's margin gain (``test_rank_correlation``: how well it orders unseen images). Returns the card."""
    old_path, new_path = Path(old), Path(new)
    old_model, old_card, new_model, new_card, dataset = load_old_and_new(old_path, new_path, dataset)
    configure_threads(threads)
    train = load_dataset(dataset, "train", data, download)
    old_rows, new_rows, labels = cache_features(old_model, new_model, train, view=view, progress=progress)
    model = fit_gain_predictor(old_rows, new_rows, labels, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                               seed=seed)
    target = oracle_priority(old_rows, new_rows, labels)
    fitted = model.priority(old_rows)
    metrics = {"train_mse": float(np.mean(((target - target.mean()) / target.std() - fitted) ** 2))}
    test = load_dataset(dataset, "test", data, download)
    test_old, test_new = (embed_dataset(m, test.images, dataset, progress=progress).numpy()
                          for m in (old_model, new_model))
    metrics["test_rank_correlation"] = _rank_correlation(model.priority(test_old),
                                                         oracle_priority(test_old, test_new, test.labels))
    return save_checkpoint(out, model, {
        "kind": "gain_predictor", "dataset": dataset, "split": "train", "data_source": train.source,
        "old_model": model_record(old_path, old_card), "new_model": model_record(new_path, new_card),
        "training": {"view": view, "rows": int(len(labels)), "hidden": hidden, "epochs": epochs,
                     "batch_size": batch_size, "lr": lr, "weight_decay": 1e-4,
                     "target": "standardised oracle margin gain (backfill.ordering.oracle_priority)"},
        "epochs": epochs, "seed": seed, "metrics": metrics, "command": command,
    })
