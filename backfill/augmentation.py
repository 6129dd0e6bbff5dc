"""Training augmentation on uint8 image batches (on the GPU when there is one).

Random crop with zero padding (4 px for CIFAR, 2 px for Fashion-MNIST) and a horizontal flip for CIFAR only.
Fashion-MNIST is not flipped: its images are canonically aligned (all shoes point left), so a flipped image
is a view the test set never shows; the crop alone is the cheap, useful jitter.
"""

from __future__ import annotations

import torch

from backfill.datasets import get_spec

__all__ = ["augment_batch"]


def augment_batch(x: torch.Tensor, dataset: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and (CIFAR only) random horizontal flip, on a uint8/float batch.

    ``x`` is ``(n, C, H, W)``; each image gets its own offset in ``[0, 2 * pad]`` and flip coin, drawn from
    ``generator`` (on ``x``'s device), so runs are reproducible. Returns a new tensor of the same shape.
    """
    spec = get_spec(dataset)
    if x.ndim != 4:
        raise ValueError(f"expected a (n, C, H, W) batch, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    dev, p = x.device, spec.pad
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    wp = w + 2 * p
    dy = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=generator)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (n, w)
    if spec.flip:
        flip = torch.rand(n, device=dev, generator=generator) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    # One flat gather per batch: measured ~40x faster on CPU than per-image slicing or 4-d fancy indexing.
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)
