"""Rebuild the offline assets from Debian's Fashion-MNIST: ``python assets/build.py``.

Writes ``assets/fashion_mnist_test.npz`` (the test split, MIT licence) and the sample query PNGs in
``assets/samples/``. The app and the tests only read them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from backfill.datasets import (
    _IDX_NAMES,
    ASSETS_DIR,
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_BUNDLE,
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    _candidates,
    _find_idx,
    load_dataset,
    read_idx,
)


def build_fashion_mnist_bundle(out: str | os.PathLike = FASHION_MNIST_BUNDLE,
                               root: str | os.PathLike | None = None) -> Path:
    """Write the offline bundle: Fashion-MNIST test split as ``np.savez_compressed``.

    Keys: ``images`` uint8 (10000, 28, 28), ``labels`` uint8 (10000,), ``class_names`` str (10,).
    Reads the IDX files (``root`` / ``$BACKFILL_FASHION_MNIST`` / the Debian package).
    """
    places = _candidates(root, "BACKFILL_FASHION_MNIST", (DEBIAN_FASHION_MNIST,))
    for place in places:
        img, lbl = _find_idx(place, _IDX_NAMES["test"][0]), _find_idx(place, _IDX_NAMES["test"][1])
        if img and lbl:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out, images=read_idx(img), labels=read_idx(lbl),
                                class_names=np.array(FASHION_MNIST_CLASSES))
            return out
    raise DatasetNotFoundError(f"Fashion-MNIST IDX test files not found in {', '.join(map(str, places))}")


SAMPLE_CLASSES = (0, 1, 3, 5, 6, 7, 8, 9)


def build_sample_queries(out_dir: str | os.PathLike = ASSETS_DIR / "samples",
                         classes: tuple[int, ...] = SAMPLE_CLASSES) -> list[Path]:
    """Write one Fashion-MNIST test image per class in ``classes`` as a 28x28 grayscale PNG.

    The image of class ``c`` is the first test image with label ``c``; files are named
    ``<test index>_<class name>.png``. Reads the test split with :func:`load_dataset`. Returns the paths.
    """
    ds = load_dataset("fashion_mnist", "test")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in classes:
        i = int(np.flatnonzero(ds.labels == c)[0])
        slug = ds.class_names[c].lower().replace("/", "_").replace(" ", "_").replace("-", "_")
        path = out_dir / f"{i:04d}_{slug}.png"
        Image.fromarray(ds.images[i, :, :, 0], "L").save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    print(build_fashion_mnist_bundle())
    print(*build_sample_queries(), sep="\n")
