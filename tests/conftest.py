"""Builders shared by the test modules."""

from __future__ import annotations

import numpy as np
import pytest

from backfill.embeddings import Embeddings


def clustered_bundle(n: int = 60, n_classes: int = 4, dim: int = 6, seed: int = 0,
                     arrays: tuple[str, ...] = ("old", "new", "transformed")) -> Embeddings:
    """``n`` items in ``n_classes`` Gaussian clusters, one independent noisy copy per array name."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, dim))
    return Embeddings(labels, **{name: 2 * centres[labels] + rng.normal(size=(n, dim)) for name in arrays})


@pytest.fixture
def make_bundle():
    """The :func:`clustered_bundle` builder, for tests that need several bundles."""
    return clustered_bundle
