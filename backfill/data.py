"""Datasets, class subsets, augmentation and the one preprocessing path for any image.

Datasets
--------
``load_dataset(name, split)`` returns an :class:`ImageDataset` (uint8 images ``(N, H, W, C)``, int64
labels, class names) for

* ``"cifar100"``: a directory in the layout of ``../shared/data/cifar100`` (``train.npz`` / ``test.npz``
  with ``images`` and ``labels``, ``classes.json``), given by ``root`` or the ``BACKFILL_CIFAR100``
  environment variable; or torchvision's CIFAR-100 (official split) with ``download=True``.
* ``"fashion_mnist"``: the IDX ``*.gz`` files (``root``, ``BACKFILL_FASHION_MNIST`` or the Debian package
  ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``); the test split also from the bundled
  ``assets/fashion_mnist_test.npz``; or torchvision with ``download=True``.

Preprocessing
-------------
Every image - a dataset array, an uploaded file, a PIL image - goes through :func:`preprocess`:
``load_image`` (decode, EXIF rotation, validation) -> :func:`to_model_mode` (RGBA/LA/P composited on white,
then ``L`` for Fashion-MNIST or ``RGB`` for CIFAR) -> :func:`resize_to_model` (centre-crop to a square,
then resize with bicubic/antialias to the model's input; centre-crop rather than pad because padding would
add borders the models never saw in training) -> :func:`normalize_uint8` (the shared tail, also used by
training: uint8 ``(n, C, H, W)`` -> float32 ``(x / 255 - mean) / std``). Dataset arrays already at the
model's size and channel count skip the PIL steps, which are the identity for them.

Augmentation
------------
:func:`augment_batch` works on uint8 tensors (on the GPU when there is one): random crop with zero padding
(4 px for CIFAR, 2 px for Fashion-MNIST) and a horizontal flip for CIFAR only. Fashion-MNIST is not flipped:
its images are canonically aligned (all shoes point left), so a flipped image is a view the test set never
shows; the crop alone is the cheap, useful jitter.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageDataset",
    "ImageLoadError",
    "DatasetNotFoundError",
    "load_dataset",
    "select_classes",
    "subsample_per_class",
    "per_class_indices",
    "augment_batch",
    "normalize_uint8",
    "load_image",
    "to_model_mode",
    "resize_to_model",
    "preprocess",
    "build_fashion_mnist_bundle",
    "build_sample_queries",
    "ASSETS_DIR",
    "FASHION_MNIST_BUNDLE",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
FASHION_MNIST_BUNDLE = ASSETS_DIR / "fashion_mnist_test.npz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "backfill"

#: Largest accepted image, in pixels (width * height). 40 MP covers any camera photo; larger files are
#: treated as decompression bombs (a small file that would expand to gigabytes in memory).
MAX_IMAGE_PIXELS = 40_000_000

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


class ImageLoadError(ValueError):
    """The input is not a decodable, acceptable image (message says why)."""


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


# --------------------------------------------------------------------------------------- subsets/sampling
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


# ---------------------------------------------------------------------------------- tensors/augmentation
def to_tensor_uint8(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` ndarray -> contiguous uint8 tensor ``(N, C, H, W)`` on ``device``."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # torch warns on read-only buffers (np.frombuffer, memory maps)
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def normalize_uint8(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """Shared tail of every pipeline: uint8 ``(n, C, H, W)`` -> float32 ``(x / 255 - mean) / std``."""
    spec = get_spec(dataset)
    if x.ndim != 4 or x.shape[1] != spec.channels:
        raise ValueError(f"expected a (n, {spec.channels}, H, W) tensor for {dataset}, got {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return ((x.float() / 255.0 - mean) / std).contiguous()


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


# --------------------------------------------------------------------------------- user images -> model
def load_image(source: Any) -> Image.Image:
    """Decode one image from bytes, a path, a binary file object or a PIL image, fully loaded.

    Applies the EXIF orientation (photos from phones). Raises :class:`ImageLoadError` (a ``ValueError``)
    with a message naming the problem for: empty input, data that is not an image, a truncated or corrupt
    file, an image larger than ``MAX_IMAGE_PIXELS`` (decompression bomb), and a missing path.
    """
    if isinstance(source, Image.Image):
        image = source
        _check_size(image, "image")
        try:  # a lazily opened PIL image may still hold a truncated file
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageLoadError(f"image is truncated or corrupt: {exc}") from exc
    elif isinstance(source, np.ndarray):
        image = _array_to_pil(source)
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data, what = bytes(source), "image data"
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"image file not found: {path}")
            data, what = path.read_bytes(), str(path)
        elif hasattr(source, "read"):
            data, what = source.read(), getattr(source, "name", "uploaded file")
        else:
            raise ImageLoadError(f"cannot load an image from a {type(source).__name__}")
        if not data:
            raise ImageLoadError(f"{what} is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                _check_size(image, what)
                image.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(f"{what} is too large to decode safely (possible decompression bomb): "
                                 f"{exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageLoadError(f"{what} is not a recognised image file") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageLoadError(f"{what} is truncated or corrupt: {exc}") from exc
    _check_size(image, "image")
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a fine image unusable  # noqa: BLE001
        return image


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """One uint8 image array ``(H, W)`` or ``(H, W, C)`` with C in 1, 3, 4 -> PIL (L, RGB, RGBA)."""
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageLoadError(f"an image array must be uint8 (H, W[, 1|3|4]), got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def _check_size(image: Image.Image, what: str) -> None:
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageLoadError(f"{what} has no pixels ({w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"{what} is {w}x{h} = {w * h / 1e6:.0f} MP, over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit "
            "(possible decompression bomb); downscale it first"
        )


def to_model_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to ``"RGB"`` or ``"L"``.

    Transparency (RGBA, LA, PA, P with a transparent colour) is composited on white. 16-bit images
    (``I;16*``) are scaled by 255/65535 (PIL's own conversion would clip them to white); 32-bit integer
    ``I`` images are scaled by 255/max and float ``F`` images min-max stretched to 0..255. CMYK, YCbCr,
    ``1`` and the rest use PIL's conversion.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if image.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        else:
            arr = np.clip(arr, 0, hi) / hi * 255.0
        image = Image.fromarray(np.round(arr).astype(np.uint8), "L")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != mode:
        image = image.convert(mode)
    return image


def resize_to_model(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to the largest square, then resize to ``size x size`` (bicubic, antialiased).

    Centre-crop keeps the aspect ratio without adding the padding borders the models never saw in training.
    An image already ``size x size`` is returned unchanged.
    """
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def preprocess(images: Any, dataset: str) -> torch.Tensor:
    """Turn images into the model input of ``dataset``: float32 tensor ``(n, C, H, W)``, normalised.

    ``images`` is a uint8 ndarray ``(n, H, W, C)`` / ``(n, H, W)`` (dataset images) or a single PIL image /
    bytes / path, or a list of those. Arrays already at the model's size and channel count go straight to
    the shared tail :func:`normalize_uint8` (the PIL steps are the identity for them); any other array is
    turned into PIL images and follows the upload path: :func:`load_image` -> :func:`to_model_mode` ->
    :func:`resize_to_model` -> :func:`normalize_uint8`.
    """
    spec = get_spec(dataset)
    if isinstance(images, np.ndarray):
        arr = images[..., None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (n, H, W[, C]), got {images.dtype} {images.shape}")
        if arr.shape[1:] == (spec.size, spec.size, spec.channels):
            return normalize_uint8(to_tensor_uint8(arr), dataset)
        if arr.shape[3] not in (1, 3, 4):
            raise ValueError(f"image arrays must have 1, 3 or 4 channels, got {arr.shape[3]}")
        images = [_array_to_pil(a) for a in arr]
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError("no images to preprocess")
    out = np.empty((len(images), spec.size, spec.size, spec.channels), dtype=np.uint8)
    for i, item in enumerate(images):
        img = resize_to_model(to_model_mode(load_image(item), spec.mode), spec.size)
        a = np.asarray(img, dtype=np.uint8)
        out[i] = a[..., None] if a.ndim == 2 else a
    return normalize_uint8(to_tensor_uint8(out), dataset)
