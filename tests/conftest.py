"""Builders shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

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



_FASHION_MNIST_DEB = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``debian_fashion_mnist`` read Fashion-MNIST from Debian's package (its train split is not
    bundled): where it is missing they skip, saying so in one line. ``.ci/run`` installs it and sets
    BACKFILL_REQUIRE_DATA=1, so there they always run (a missing package fails them, never skips them)."""
    if _FASHION_MNIST_DEB.is_dir() or os.environ.get("BACKFILL_REQUIRE_DATA"):
        return
    skip = pytest.mark.skip(reason="needs Fashion-MNIST from Debian: apt-get install dataset-fashion-mnist")
    for item in items:
        if "debian_fashion_mnist" in item.keywords:
            item.add_marker(skip)
