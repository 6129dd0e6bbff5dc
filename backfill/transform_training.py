"""Training the reverse transformation psi (and the new head rho) with both backbones frozen.

The backbones never change here, so their embeddings of the train split are computed once
(:func:`cache_features`) and psi / rho train on those vectors (:func:`fit_transform`): an epoch over 50,000
cached features takes seconds on a CPU. The new model's embeddings are the inputs; the old model's are the
targets (regression) or the frozen old gallery (metric-compatible loss). Every option is a field of
:class:`TransformConfig`; its defaults (temperature 0.02, all negatives, regression term weight 1, one clean
view, class-balanced batches of 32 classes x 8 images) were chosen by the held-out sweep of
``benchmarks/sweep_mc.py``, whose table is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backfill.augmentation import augment_batch, parse_views, view_images
from backfill.checkpoints import load_checkpoint, save_checkpoint
from backfill.datasets import ImageDataset, load_dataset
from backfill.images import to_tensor_uint8
from backfill.inference import embed_dataset, embed_images
from backfill.losses import MC_DENOMINATORS, MetricCompatibleLoss, TransformRegressionLoss
from backfill.models import EmbeddingHead, ReverseTransform
from backfill.training import configure_threads, resolve_device

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_HARD_NEGATIVES",
    "DEFAULT_REGRESSION_WEIGHT",
    "cache_features",
    "class_balanced_batches",
    "TransformConfig",
    "fit_transform",
    "train_transform",
    "default_rho_path",
    "model_record",
    "load_old_and_new",
]

#: Defaults of the metric-compatible training, chosen by measurement (benchmarks/sweep_mc.py).
DEFAULT_TEMPERATURE = 0.02
DEFAULT_HARD_NEGATIVES: int | None = None
DEFAULT_REGRESSION_WEIGHT = 1.0

LOSSES = ("regression", "mc")


def cache_features(
    old_model: nn.Module, new_model: nn.Module, data: ImageDataset, augmented_copies: int = 0,
    batch_size: int = 256, device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
    view: str = "clean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Old and new embeddings of every image of ``data`` (computed once, backbones frozen).

    One block of rows per view named in ``view`` (:func:`backfill.augmentation.parse_views`: ``"clean"``,
    ``"flip"``, ``"crop"``, or several joined by ``+``), then ``augmented_copies`` randomly augmented copies
    of the first (:func:`backfill.augmentation.augment_batch`, end-to-end backbones only), each fed
    identically to both models.

    Returns
    -------
    old_feats : float32 ``(rows, d_old)``; new_feats : float32 ``(rows, d_new)``; labels : int64 ``(rows,)``,
    rows = (number of views named + ``augmented_copies``) x N.
    """
    if augmented_copies < 0:
        raise ValueError(f"augmented_copies must be >= 0, got {augmented_copies}")
    names = parse_views(view)
    olds = [embed_dataset(old_model, data.images, data.name, batch_size=batch_size, device=device,
                          progress=progress, view=name).numpy() for name in names]
    news = [embed_dataset(new_model, data.images, data.name, batch_size=batch_size, device=device,
                          progress=progress, view=name).numpy() for name in names]
    if augmented_copies and "pretrained" in (getattr(old_model, "spec", {}).get("arch"),
                                      getattr(new_model, "spec", {}).get("arch")):
        raise ValueError("augmented copies are for end-to-end backbones; heads on pretrained backbones "
                         "train on cached features of fixed views (view='flip', 'crop')")
    first = to_tensor_uint8(view_images(data.images, names[0], data.name)) if augmented_copies else None
    for copy in tqdm(range(1, augmented_copies + 1), desc="cache features (augmented copies)",
                     disable=not progress or not augmented_copies):
        # Each augmented copy is drawn once and fed to both models, so the old/new pair of every row shows
        # the same crop/flip.
        x = augment_batch(first, data.name, generator=torch.Generator().manual_seed(seed * 1000 + copy))
        olds.append(embed_images(old_model, x, data.name, batch_size, device).numpy())
        news.append(embed_images(new_model, x, data.name, batch_size, device).numpy())
    labels = np.tile(data.labels, len(olds)).astype(np.int64)
    return (np.ascontiguousarray(np.concatenate(olds), dtype=np.float32),
            np.ascontiguousarray(np.concatenate(news), dtype=np.float32), labels)


def class_balanced_batches(
    labels: np.ndarray, classes_per_batch: int, samples_per_class: int, rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """One epoch of class-balanced batches: P classes x K samples each (indices into ``labels``).

    Every item is visited about once per epoch: each class's items are shuffled and cut into chunks of K
    (the last chunk topped up with random items of the class; a class with fewer than K items is sampled
    with replacement); the chunks are shuffled and grouped P at a time, never two chunks of the same class
    in one batch. Yields int64 arrays of length ``P * K`` (fewer classes than P: all classes).
    """
    if classes_per_batch < 1 or samples_per_class < 1:
        raise ValueError("classes_per_batch and samples_per_class must be >= 1")
    k = samples_per_class
    chunks: list[tuple[int, np.ndarray]] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_chunks = max(1, math.ceil(len(idx) / k))
        pad = n_chunks * k - len(idx)
        if pad:
            idx = np.concatenate([idx, rng.choice(idx, size=pad, replace=pad > len(idx))])
        chunks.extend((int(c), part) for part in idx.reshape(n_chunks, k))
    order = rng.permutation(len(chunks))
    pending: dict[int, list[np.ndarray]] = {}
    for i in order:
        c, part = chunks[i]
        pending.setdefault(c, []).append(part)
    p = min(classes_per_batch, len(pending))
    while sum(len(v) for v in pending.values()) and len(pending) >= p:
        # Draw P distinct classes, weighted by how many chunks they still hold (keeps the epoch uniform).
        names = list(pending)
        weights = np.array([len(pending[c]) for c in names], dtype=np.float64)
        picked = rng.choice(len(names), size=p, replace=False, p=weights / weights.sum())
        batch = []
        for j in picked:
            c = names[j]
            batch.append(pending[c].pop())
            if not pending[c]:
                del pending[c]
        yield np.concatenate(batch).astype(np.int64)


def _as_tensor(name: str, array: np.ndarray, ndim: int) -> torch.Tensor:
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass(frozen=True)
class TransformConfig:
    """How psi (and rho) are trained.

    Attributes
    ----------
    loss : ``"regression"`` (:class:`~backfill.losses.TransformRegressionLoss`, shuffled batches) or ``"mc"``
        (:class:`~backfill.losses.MetricCompatibleLoss` + ``regression_weight`` x regression, class-balanced
        batches of ``batch_size // samples_per_class`` classes x ``samples_per_class``).
    denominator : L_MC's negatives, ``"joint"`` | ``"old"`` | ``"new"`` | ``"separate"`` (the ablation).
    rho : also train the head rho (``loss="mc"`` only); psi then reads ``rho(phi_n(x))``.
    rho_anchor : weight of ``mean ||rho(phi_n(x)) - phi_n(x)||^2`` added to the loss (0 = none): it keeps rho
        near the new model, whose training-image embeddings are tighter than those of unseen images.
    rho_hidden : rho's hidden width: ``None`` a linear rho, else a residual MLP
        (:class:`~backfill.models.EmbeddingHead`).
    temperature, hard_negatives : of L_MC (``hard_negatives=None``: all negatives).
    regression_weight : weight of the regression term added to L_MC (0 = pure L_MC).
    epochs, batch_size, samples_per_class, lr, weight_decay : AdamW with a cosine learning-rate schedule.
    hidden : psi's hidden width (``None``: ReverseTransform's default).
    augmented_copies : randomly augmented copies of every train image, embedded once and cached with the
        views (end-to-end backbones only).
    view : the train images as psi (and rho) see them: ``"clean"``, ``"flip"`` (mirrored), ``"crop"`` (one
        random padded crop and flip per image), or several joined by ``+`` (one row per image and view). The
        models embed the images they trained on more tightly than unseen ones; mirrored or cropped, those
        images are seen anew, and psi and rho learn from embeddings that spread like a query's
        (``benchmarks/README.md``).
    seed : seeds the initialisation and the batch order (runs are deterministic on CPU).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    loss: str = "regression"
    denominator: str = "joint"
    rho: bool = False
    rho_anchor: float = 0.0
    rho_hidden: int | None = None
    temperature: float = DEFAULT_TEMPERATURE
    hard_negatives: int | None = DEFAULT_HARD_NEGATIVES
    regression_weight: float = DEFAULT_REGRESSION_WEIGHT
    epochs: int = 15
    batch_size: int = 256
    samples_per_class: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int | None = None
    augmented_copies: int = 0
    view: str = "clean"
    seed: int = 0
    device: str = "auto"

    def validated(self) -> TransformConfig:
        """``self``, or a ``ValueError`` naming the first inconsistent option."""
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        if self.loss == "regression" and self.rho:
            raise ValueError("rho is trained by the metric-compatible loss only (loss='mc')")
        if self.denominator not in MC_DENOMINATORS:
            raise ValueError(f"unknown denominator {self.denominator!r}; expected one of {MC_DENOMINATORS}")
        if self.loss == "mc" and self.denominator == "new" and not self.rho and self.regression_weight == 0:
            raise ValueError("denominator 'new' gives psi no gradient: train rho too or keep a regression term")
        if self.rho_anchor < 0:
            raise ValueError(f"rho_anchor must be >= 0, got {self.rho_anchor}")
        if self.rho_hidden is not None and (not self.rho or self.rho_hidden < 1):
            raise ValueError(f"rho_hidden needs rho and must be >= 1, got {self.rho_hidden}")
        if self.regression_weight < 0:
            raise ValueError(f"regression_weight must be >= 0, got {self.regression_weight}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.loss == "mc" and not 1 < self.samples_per_class <= self.batch_size:
            raise ValueError(f"samples_per_class must be in [2, batch_size], got {self.samples_per_class}")
        if self.augmented_copies < 0:
            raise ValueError(f"augmented_copies must be >= 0, got {self.augmented_copies}")
        parse_views(self.view)
        return self

    def card(self) -> dict[str, Any]:
        """What a psi/rho card records of the training (L_MC options only for ``loss="mc"``)."""
        options = asdict(self)
        if self.loss != "mc":
            for key in ("denominator", "temperature", "hard_negatives", "regression_weight", "samples_per_class"):
                options.pop(key)
        if not self.rho:
            options.pop("rho_anchor")
            options.pop("rho_hidden")
        return options


def fit_transform(
    old_feats: np.ndarray, new_feats: np.ndarray, labels: np.ndarray, config: TransformConfig | None = None, *,
    progress: bool = True, callback: Callable[[int, nn.Module, nn.Module | None], dict[str, float]] | None = None,
) -> tuple[ReverseTransform, EmbeddingHead | None, list[dict[str, float]]]:
    """Train psi (new -> old space) and optionally rho on cached features of frozen backbones.

    Parameters
    ----------
    old_feats : float32 ``(n, d_old)``, ``phi_o(x)`` of the training images (targets / frozen old gallery).
    new_feats : float32 ``(n, d_new)``, ``phi_n(x)`` of the same images, same order (the inputs).
    labels : int ``(n,)``, class ids.
    config : :class:`TransformConfig` (default: regression).
    callback : called after each epoch as ``callback(epoch, psi, rho)`` with the modules in eval mode;
        the dict it returns is merged into that epoch's history row (e.g. a validation metric).

    Returns
    -------
    psi : :class:`~backfill.models.ReverseTransform` ``(d_new -> d_old)``, eval mode, on the CPU.
    rho : :class:`~backfill.models.EmbeddingHead` ``(d_new)`` or ``None``.
    history : one dict per epoch: ``epoch``, ``loss`` (mean training loss), ``mc`` and ``regression``
        (their means; ``mc`` only for ``loss="mc"``), ``lr``, plus the callback's entries.
    """
    cfg = (config or TransformConfig()).validated()
    old = _as_tensor("old_feats", old_feats, 2).float()
    new = _as_tensor("new_feats", new_feats, 2).float()
    y = _as_tensor("labels", labels, 1).long()
    if not len(old) == len(new) == len(y):
        raise ValueError(
            f"old_feats, new_feats and labels must have the same length, got {len(old)}, {len(new)}, {len(y)}"
        )
    if len(y) < 2:
        raise ValueError("need at least 2 training items")

    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    psi = ReverseTransform(new.shape[1], old.shape[1], cfg.hidden).to(dev)
    head = EmbeddingHead(new.shape[1], cfg.rho_hidden).to(dev) if cfg.rho else None
    params = list(psi.parameters()) + (list(head.parameters()) if head is not None else [])
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    regression = TransformRegressionLoss()
    mc = MetricCompatibleLoss(cfg.temperature, cfg.hard_negatives, cfg.denominator) if cfg.loss == "mc" else None
    old, new, y = old.to(dev), new.to(dev), y.to(dev)
    y_np = y.cpu().numpy()
    batch_size, samples_per_class, epochs = cfg.batch_size, cfg.samples_per_class, cfg.epochs

    def batches() -> list[np.ndarray]:
        if mc is None:
            perm = rng.permutation(len(y_np))
            # Drop a last batch of size 1: BatchNorm cannot train on it.
            return [b for b in np.array_split(perm, math.ceil(len(perm) / batch_size)) if len(b) > 1]
        return list(class_balanced_batches(y_np, max(1, batch_size // samples_per_class),
                                           samples_per_class, rng))

    # Stepped once per epoch (class-balanced epochs vary slightly in their number of batches).
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, epochs + 1), desc=f"train psi ({cfg.loss})", disable=not progress)
    for epoch in bar:
        psi.train()
        if head is not None:
            head.train()
        sums = {"loss": 0.0, "mc": 0.0, "regression": 0.0}
        epoch_batches = batches()
        for idx_np in epoch_batches:
            idx = torch.from_numpy(idx_np).to(dev)
            feats = new[idx]
            a = head(feats) if head is not None else feats
            b = psi(a)
            reg = regression(b, old[idx])
            total = reg * (cfg.regression_weight if mc is not None else 1.0)
            if head is not None and cfg.rho_anchor:
                total = total + cfg.rho_anchor * (a - feats).pow(2).sum(dim=1).mean()
            if mc is not None:
                mc_value = mc(a, b, a, old[idx], y[idx])
                total = total + mc_value
                sums["mc"] += mc_value.item()
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            sums["loss"] += total.item()
            sums["regression"] += reg.item()
        row: dict[str, float] = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        scheduler.step()
        row.update({k: v / len(epoch_batches) for k, v in sums.items() if mc is not None or k != "mc"})
        psi.eval()
        if head is not None:
            head.eval()
        if callback is not None:
            row.update(callback(epoch, psi, head))
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    psi = psi.cpu().eval()
    head = head.cpu().eval() if head is not None else None
    return psi, head, history


def model_record(path: Path, card: dict[str, Any]) -> dict[str, Any]:
    """What a psi / rho / gain predictor card says about a checkpoint it was trained against (checked by
    ModelSuite.load)."""
    return {"name": path.name, "path": str(path), "sha256": card.get("weights_sha256"),
            "kind": card.get("kind"), "embedding_dim": card.get("embedding_dim")}


def load_old_and_new(old: Path, new: Path, dataset: str | None = None
                     ) -> tuple[nn.Module, dict[str, Any], nn.Module, dict[str, Any], str]:
    """The old and new (or BCT) checkpoints a psi / rho / gain predictor is trained against: ``(old model, its
    card, new model, its card, dataset)``; ``ValueError`` when either was trained on another dataset than
    ``dataset`` (default: the old model's)."""
    old_model, old_card = load_checkpoint(old, expect={"kind": "old"})
    new_model, new_card = load_checkpoint(new, expect={"kind": ("new", "bct")})
    dataset = dataset or old_card.get("dataset")
    for name, card in (("old", old_card), ("new", new_card)):
        if card.get("dataset") != dataset:
            raise ValueError(f"the {name} model was trained on {card.get('dataset')!r}, not {dataset!r}")
    return old_model, old_card, new_model, new_card, dataset


def default_rho_path(psi_path: str | os.PathLike) -> Path:
    """Where ``train_transform`` writes rho beside psi: ``psi_mc_rho.pt`` -> ``rho_mc.pt`` (the suite
    layout), any other ``NAME.pt`` -> ``rho_NAME.pt``."""
    psi_path = Path(psi_path)
    stem = psi_path.stem
    if stem.startswith("psi_"):
        stem = stem[len("psi_"):]
        stem = stem[: -len("_rho")] if stem.endswith("_rho") else stem
    return psi_path.with_name(f"rho_{stem}.pt")


def cached_features(
    old_model: nn.Module, old_card: dict[str, Any], new_model: nn.Module, new_card: dict[str, Any],
    data: ImageDataset, augmented_copies: int = 0, seed: int = 0, device: str | torch.device = "cpu",
    cache: str | os.PathLike | None = None, progress: bool = True, view: str = "clean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cache_features`, reusing ``cache`` (an ``.npz``) when it was made from the same weights
    (SHA-256), dataset split, number of images, view, augmented copies and seed; otherwise computing and writing it."""
    key = json.dumps({"old": old_card.get("weights_sha256"), "new": new_card.get("weights_sha256"),
                      "dataset": data.name, "split": data.split, "n": len(data), "augmented_copies": augmented_copies,
                      "seed": seed, **({"view": view} if view != "clean" else {})}, sort_keys=True)
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return z["old"], z["new"], z["labels"]
    old, new, labels = cache_features(old_model, new_model, data, augmented_copies, device=device, seed=seed,
                                      progress=progress, view=view)
    if cache is not None:  # written whole, then renamed: a lane reading it meanwhile never sees half a file
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache).with_name(f"{Path(cache).name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, old=old, new=new, labels=labels, key=np.array(key))
        os.replace(tmp, cache)
    return old, new, labels


def train_transform(
    old: str | os.PathLike, new: str | os.PathLike, out: str | os.PathLike, config: TransformConfig | None = None,
    *, dataset: str | None = None, data: str | os.PathLike | None = None, download: bool = False,
    rho_out: str | os.PathLike | None = None, feature_cache: str | os.PathLike | None = None,
    threads: int | None = None, command: str | None = None, progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Train psi (and rho) for the old/new checkpoints ``old``/``new`` and write them with their cards.

    The features are the old and new models' embeddings of every image of the dataset's **train** split
    (all classes: the gallery holds every class), cached in ``feature_cache`` (an ``.npz``) when given.
    ``threads``: torch CPU threads (default one per core; on a busy machine 1 is faster).

    Writes ``out`` (kind ``psi``) and, with ``config.rho``, ``rho_out`` (default :func:`default_rho_path`,
    kind ``rho``; written first, so psi's card can record rho's SHA-256). Each card records the old/new
    checkpoints (name, path, SHA-256) it was trained against, the training options, the history and the
    command. Returns ``{"psi": card, "rho": card}`` (``"rho"`` only with rho).
    """
    cfg = (config or TransformConfig()).validated()
    old_path, new_path, out = Path(old), Path(new), Path(out)
    old_model, old_card, new_model, new_card, dataset = load_old_and_new(old_path, new_path, dataset)
    dev = resolve_device(cfg.device)
    if dev.type == "cpu":
        configure_threads(threads)
    train = load_dataset(dataset, "train", data, download)
    old_feats, new_feats, labels = cached_features(
        old_model, old_card, new_model, new_card, train, cfg.augmented_copies, cfg.seed, dev, feature_cache, progress,
        view=cfg.view)
    psi, head, history = fit_transform(old_feats, new_feats, labels, replace(cfg, device=str(dev)),
                                       progress=progress)
    common = {
        "dataset": dataset, "split": "train", "data_source": train.source,
        "old_model": model_record(old_path, old_card), "new_model": model_record(new_path, new_card),
        "training": {**cfg.card(), "train_features": int(len(labels)), "device": str(dev)},
        "epochs": len(history), "seed": cfg.seed, "history": history, "command": command,
    }
    cards: dict[str, dict[str, Any]] = {}
    if head is not None:
        rho_path = Path(rho_out) if rho_out else default_rho_path(out)
        cards["rho"] = save_checkpoint(rho_path, head, {"kind": "rho", **common})
        common["rho_model"] = model_record(rho_path, cards["rho"])
    cards["psi"] = save_checkpoint(out, psi, {"kind": "psi", **common})
    return cards
