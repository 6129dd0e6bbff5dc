"""Running trained models on images in eval mode, batched: embeddings (and logits) of dataset arrays.

Heads on frozen pretrained backbones (``backbones.PretrainedNet``) run on the backbone's cached features of
a dataset split (:func:`embed_dataset`), so a split is never pushed through a backbone twice.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from backfill.images import normalize_uint8, to_tensor_uint8

__all__ = ["autocast", "embed_images", "embed_dataset"]


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA (no loss scaler needed), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_images(model: nn.Module, images: np.ndarray | torch.Tensor, dataset: str, batch_size: int = 512,
                 device: str | torch.device = "cpu", logits: bool = False,
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of dataset images with ``model`` in eval mode, batched.

    ``images``: uint8 ndarray ``(n, H, W, C)`` at the model's input size, or a uint8 tensor ``(n, C, H, W)``.
    Returns float32 CPU tensor ``(n, d)`` (L2-normalised), and the logits ``(n, classes)`` when ``logits``.
    """
    device = torch.device(device)
    x = to_tensor_uint8(images) if isinstance(images, np.ndarray) else images
    was_training = model.training
    model.eval()
    embs, outs = [], []
    for start in range(0, len(x), batch_size):
        batch = normalize_uint8(x[start:start + batch_size].to(device), dataset)
        with autocast(device):
            emb, out = model(batch)
        embs.append(emb.float().cpu())
        outs.append(out.float().cpu())
    model.train(was_training)
    emb = torch.cat(embs) if embs else torch.zeros(0, getattr(model, "embedding_dim", 0))
    if logits:
        return emb, (torch.cat(outs) if outs else torch.zeros(0, getattr(model, "num_classes", 0)))
    return emb


def embed_dataset(model: nn.Module, images: np.ndarray, dataset: str, *, batch_size: int = 512,
                  device: str | torch.device = "cpu", logits: bool = False, progress: bool = False,
                  view: str = "clean") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`embed_images` of a whole dataset split; a head on a frozen pretrained backbone
    (``models.PretrainedNet``) runs on the backbone's cached features of ``images`` instead of the images.
    ``view``: of that view of the images (:func:`backfill.augmentation.view_images`; for a pretrained
    backbone, its cached features of the view)."""
    if getattr(model, "spec", {}).get("arch") != "pretrained":
        from backfill.augmentation import view_images

        return embed_images(model, view_images(images, view, dataset), dataset, batch_size, device, logits)
    from backfill.backbones import dataset_features

    backbone, feat_dataset, resolution = model.backbone_key
    feats = torch.from_numpy(dataset_features(backbone, images, dataset=feat_dataset, resolution=resolution,
                                              view=view, progress=progress))
    was_training = model.training
    model.eval()
    embs, outs = [], []
    with torch.no_grad():
        for start in range(0, len(feats), 4096):
            emb, out = model.forward_features(feats[start:start + 4096].to(device))
            embs.append(emb.cpu())
            outs.append(out.cpu())
    model.train(was_training)
    emb = torch.cat(embs)
    return (emb, torch.cat(outs)) if logits else emb
