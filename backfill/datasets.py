"""Datasets: CIFAR-100 and Fashion-MNIST splits, their input specs, class subsets and subsampling.

``load_dataset(name, split)`` returns an :class:`ImageDataset` (uint8 images ``(N, H, W, C)``, int64
labels, class names) for

* ``"cifar100"``: a directory in the layout of ``train.npz`` / ``test.npz`` (``images``, ``labels``) and
  ``classes.json``, given by ``root`` or the ``BACKFILL_CIFAR100`` environment variable; or torchvision's
  CIFAR-100 (official split) with ``download=True``.
* ``"fashion_mnist"``: the IDX ``*.gz`` files (``root``, ``BACKFILL_FASHION_MNIST`` or the Debian package
  ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``); the test split also from the bundled
  ``assets/fashion_mnist_test.npz``; or torchvision with ``download=True``.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageDataset",
    "DatasetNotFoundError",
    "get_spec",
    "load_dataset",
    "read_idx",
    "select_classes",
    "per_class_indices",
    "subsample_per_class",
    "ASSETS_DIR",
    "FASHION_MNIST_BUNDLE",
    "FASHION_MNIST_CLASSES",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_DOWNLOAD_ROOT",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
FASHION_MNIST_BUNDLE = ASSETS_DIR / "fashion_mnist_test.npz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "backfill"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True)
class DatasetSpec:
    """What a model for a dataset expects: input mode, size, normalisation, augmentation."""

    name: str
    mode: str  # PIL mode of the model input: "RGB" or "L"
    size: int  # square input side
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int  # random-crop padding (pixels) for training
    flip: bool  # random horizontal flip for training

    @property
    def channels(self) -> int:
        return len(self.mean)

    def card(self) -> dict[str, Any]:
        """JSON-able description of the input, for checkpoint cards."""
        return {"mode": self.mode, "size": self.size, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std)}


#: Normalisation: per-channel mean/std of the training images (CIFAR-100: the commonly used values;
#: Fashion-MNIST: measured on its 60,000 training images).
DATASETS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec("cifar100", "RGB", 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            pad=4, flip=True),
    "fashion_mnist": DatasetSpec("fashion_mnist", "L", 28, (0.2860,), (0.3530,), pad=2, flip=False),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where we looked (message lists the places and how to get them)."""


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of dataset ``name``; ``ValueError`` for an unknown name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


@dataclass
class ImageDataset:
    """Images and labels of one split.

    Attributes
    ----------
    images : uint8 ndarray (N, H, W, C), C = 3 (RGB) or 1 (grayscale).
    labels : int64 ndarray (N,).
    class_names : list of str, index = label (all classes of the dataset, also after subsetting).
    name, split : dataset name and split ("train" / "test").
    source : where it was loaded from (for checkpoint cards).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str = ""
    split: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------------------- loading
def load_dataset(name: str, split: str, root: str | os.PathLike | None = None,
                 download: bool = False) -> ImageDataset:
    """Load split ``"train"`` or ``"test"`` of ``"cifar100"`` or ``"fashion_mnist"``.

    Where it looks, in order (the first that has the files wins):

    * cifar100: ``root``, then ``$BACKFILL_CIFAR100`` - a directory with ``train.npz``/``test.npz``/
      ``classes.json``, or one holding torchvision's ``cifar-100-python`` folder; then, with
      ``download=True``, torchvision's download (official split) into ``root`` or ``~/.cache/backfill``.
    * fashion_mnist: ``root``, ``$BACKFILL_FASHION_MNIST``, ``/usr/share/datasets/fashion-mnist`` (IDX
      ``*-idx?-ubyte[.gz]`` files, also torchvision's ``FashionMNIST/raw`` sub-folder); for the test split the
      bundled ``assets/fashion_mnist_test.npz``; then, with ``download=True``, torchvision.

    Raises ``DatasetNotFoundError`` (a ``FileNotFoundError``) naming the places searched and how to get
    the data; ``ValueError`` for an unknown name or split.
    """
    get_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    loader = _load_cifar100 if name == "cifar100" else _load_fashion_mnist
    return loader(split, root, download)


def _candidates(root: str | os.PathLike | None, env: str, extra: tuple[Path, ...] = ()) -> list[Path]:
    out = [Path(root).expanduser()] if root else []
    if os.environ.get(env):
        out.append(Path(os.environ[env]).expanduser())
    return out + list(extra)


def _load_cifar100(split: str, root, download: bool) -> ImageDataset:
    places = _candidates(root, "BACKFILL_CIFAR100")
    for place in places:
        npz = place / f"{split}.npz"
        if npz.is_file():
            with np.load(npz) as z:
                images, labels = z["images"], z["labels"]
            classes_file = place / "classes.json"
            if not classes_file.is_file():
                raise DatasetNotFoundError(f"{place} has {npz.name} but no classes.json")
            names = json.loads(classes_file.read_text())["classes"]
            return ImageDataset(images, labels, list(names), "cifar100", split, str(place))
        if (place / "cifar-100-python").is_dir():
            return _torchvision_cifar100(split, place, download=False)
    if download:
        target = Path(root).expanduser() if root else DEFAULT_DOWNLOAD_ROOT
        return _torchvision_cifar100(split, target, download=True)
    where = ", ".join(str(p) for p in places) or "nowhere (no --data / root given, BACKFILL_CIFAR100 unset)"
    raise DatasetNotFoundError(
        f"CIFAR-100 {split} split not found; looked in: {where}. Point --data (or BACKFILL_CIFAR100) to a "
        "directory with train.npz/test.npz/classes.json, or pass --download to fetch the official split "
        "with torchvision (needs internet)."
    )


def _torchvision_cifar100(split: str, root: Path, download: bool) -> ImageDataset:
    from torchvision.datasets import CIFAR100

    ds = CIFAR100(str(root), train=split == "train", download=download)
    return ImageDataset(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets), list(ds.classes),
                        "cifar100", split, f"torchvision:{root}")


_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes into an ndarray of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape).copy()  # np.frombuffer is read-only


def _find_idx(place: Path, stem: str) -> Path | None:
    for folder in (place, place / "FashionMNIST" / "raw", place / "raw"):
        for suffix in (".gz", ""):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def _load_fashion_mnist(split: str, root, download: bool) -> ImageDataset:
    places = _candidates(root, "BACKFILL_FASHION_MNIST", (DEBIAN_FASHION_MNIST,))
    img_stem, lbl_stem = _IDX_NAMES[split]
    for place in places:
        img, lbl = _find_idx(place, img_stem), _find_idx(place, lbl_stem)
        if img and lbl:
            return ImageDataset(read_idx(img), read_idx(lbl), list(FASHION_MNIST_CLASSES), "fashion_mnist",
                                split, str(place))
    if split == "test" and FASHION_MNIST_BUNDLE.is_file():
        with np.load(FASHION_MNIST_BUNDLE) as z:
            return ImageDataset(z["images"], z["labels"], [str(c) for c in z["class_names"]],
                                "fashion_mnist", split, str(FASHION_MNIST_BUNDLE))
    if download:
        from torchvision.datasets import FashionMNIST

        target = Path(root).expanduser() if root else DEFAULT_DOWNLOAD_ROOT
        ds = FashionMNIST(str(target), train=split == "train", download=True)
        return ImageDataset(ds.data.numpy(), ds.targets.numpy(), list(FASHION_MNIST_CLASSES),
                            "fashion_mnist", split, f"torchvision:{target}")
    where = ", ".join(str(p) for p in places)
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split} split not found; looked for {img_stem}[.gz] in: {where}. Install it with "
        "`apt-get install dataset-fashion-mnist`, point --data (or BACKFILL_FASHION_MNIST) to a folder with "
        "the IDX files, or pass --download (torchvision, needs internet)."
    )


def select_classes(ds: ImageDataset, classes: int | list[int] | np.ndarray) -> ImageDataset:
    """Keep only the images of ``classes`` (an int k means the first k classes, ``0..k-1``).

    Labels are *not* remapped (class ids stay global, so old and new models share one label space).
    """
    if isinstance(classes, (int, np.integer)):
        if not 1 <= classes <= ds.num_classes:
            raise ValueError(f"number of classes must be in [1, {ds.num_classes}], got {classes}")
        keep_ids = np.arange(int(classes))
    else:
        keep_ids = np.asarray(classes, dtype=np.int64)
        if keep_ids.size == 0 or keep_ids.min() < 0 or keep_ids.max() >= ds.num_classes:
            raise ValueError(f"class ids must be a non-empty subset of [0, {ds.num_classes})")
    mask = np.isin(ds.labels, keep_ids)
    return ImageDataset(ds.images[mask], ds.labels[mask], ds.class_names, ds.name, ds.split, ds.source,
                        {**ds.meta, "classes": keep_ids.tolist()})


def per_class_indices(labels: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``n_per_class`` items per label, chosen by a seeded permutation."""
    if n_per_class <= 0:
        raise ValueError(f"n_per_class must be positive, got {n_per_class}")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:n_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def subsample_per_class(ds: ImageDataset, n_per_class: int, seed: int = 0) -> ImageDataset:
    """Keep at most ``n_per_class`` images per class, chosen by a seeded permutation (deterministic).

    The kept images stay in their original order.
    """
    keep_idx = per_class_indices(ds.labels, n_per_class, seed)
    return ImageDataset(ds.images[keep_idx], ds.labels[keep_idx], ds.class_names, ds.name, ds.split,
                        ds.source, {**ds.meta, "subsample_per_class": n_per_class, "subsample_seed": seed})


