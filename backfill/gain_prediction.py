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
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from backfill._validation import check_matrix
from backfill.ordering import oracle_priority

__all__ = ["GainPredictor", "fit_gain_predictor"]


class GainPredictor(nn.Module):
    """``Linear(d_old, hidden) - ReLU - Linear(hidden, 1)``: an old embedding -> its predicted margin gain
    (standardised over the training rows; only the order of the predictions matters)."""

    def __init__(self, d_old: int, hidden: int = 256) -> None:
        super().__init__()
        if d_old < 1 or hidden < 1:
            raise ValueError(f"d_old and hidden must be >= 1, got {d_old} and {hidden}")
        self.net = nn.Sequential(nn.Linear(d_old, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, old: torch.Tensor) -> torch.Tensor:
        return self.net(old).squeeze(1)

    @torch.inference_mode()
    def priority(self, old: np.ndarray) -> np.ndarray:
        """Backfill priority ``(n,)`` float64 of stored old embeddings ``(n, d_old)``: the largest predicted
        gain first once fed to :func:`backfill.ordering.order_by_score`."""
        # No dropout or batch norm: train and eval mode compute the same function.
        return self(torch.from_numpy(np.ascontiguousarray(check_matrix(old, "old")))).double().numpy()


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
