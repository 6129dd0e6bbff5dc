"""The one preprocessing path for any image: an uploaded file, a PIL image, a dataset array.

``preprocess(images, dataset)``: :func:`load_image` (decode, EXIF rotation, validation) ->
:func:`to_model_mode` (RGBA/LA/P composited on white, then ``L`` for Fashion-MNIST or ``RGB`` for CIFAR) ->
:func:`resize_to_model` (centre-crop to a square, then bicubic/antialiased resize to the model's input:
padding would add borders the models never saw) -> :func:`normalize_uint8` (the shared tail, also used by
training: uint8 ``(n, C, H, W)`` -> float32 ``(x / 255 - mean) / std``). Dataset arrays already at the
model's size and channel count skip the PIL steps, which are the identity for them.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from backfill.datasets import get_spec

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageLoadError",
    "load_image",
    "to_model_mode",
    "resize_to_model",
    "preprocess",
    "normalize_uint8",
    "to_tensor_uint8",
]

#: Largest accepted image, in pixels (width * height). 40 MP covers any camera photo; larger files are
#: treated as decompression bombs (a small file that would expand to gigabytes in memory).
MAX_IMAGE_PIXELS = 40_000_000

class ImageLoadError(ValueError):
    """The input is not a decodable, acceptable image (message says why)."""


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
