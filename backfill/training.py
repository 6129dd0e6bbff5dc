"""Training loops for the backbones: ``old``, ``new`` and ``bct``.

* ``old``: the first ``K`` classes (default: half of them), cross-entropy with label smoothing 0.1.
* ``new``: all classes (or the first ``K``), same loss.
* ``bct``: a new model trained with ``CE + bct_weight * L_influence``, where the influence loss feeds the new
  embedding through the frozen old classifier extended to the new classes (``models.extend_classifier``:
  unseen classes get the normalised mean of their old embeddings) - BCT (Shen et al., CVPR 2020).

Choices and why:

* SGD with Nesterov momentum 0.9, weight decay 5e-4 and a OneCycle learning-rate schedule (peak ``lr``,
  30% warm-up, cosine annealing). The CPU budget allows only a handful of epochs; OneCycle ("super-
  convergence", Smith & Topin 2018) is the schedule that gets the most accuracy out of a short, fixed
  number of epochs for CIFAR ResNets, and SGD+Nesterov generalises better than AdamW on them.
* Data stays a uint8 tensor (on the GPU when there is one); each batch is cropped/flipped there
  (``data.augment_batch``) and normalised by ``data.normalize_uint8`` - the same tail as every other
  image path. A DataLoader with PIL transforms is several times slower on 2 CPU cores.
* Determinism: a seeded ``torch.Generator`` drives the epoch permutation and the augmentation; global
  seeds are set too. On CUDA, ``torch.autocast`` (bfloat16, no loss scaler needed) speeds up training.
* Resumable: after each epoch the model, optimiser, scheduler, generator state and history go to
  ``<out>.resume.pt``; ``resume=True`` continues from it. The file is removed once the run completes.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augmentation import augment_batch
from .checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_resume,
    resume_path,
    save_checkpoint,
    save_resume,
)
from .datasets import ImageDataset, get_spec, load_dataset, select_classes, subsample_per_class
from .images import normalize_uint8, to_tensor_uint8
from .inference import autocast, embed_images
from .models import CifarResNet, SmallCNN, extend_classifier

__all__ = [
    "KINDS",
    "DEFAULTS",
    "TrainConfig",
    "TrainResult",
    "resolve_device",
    "set_seed",
    "configure_threads",
    "build_backbone",
    "train_backbone",
]

KINDS = ("old", "new", "bct")

#: Per-dataset defaults (measured on the 2-core CPU; see the README's training section).
DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar100": {"arch": "resnet", "depth": 8, "width": 16, "epochs": 15, "batch_size": 128, "lr": 0.1},
    "fashion_mnist": {"arch": "cnn", "depth": 8, "width": 16, "epochs": 5, "batch_size": 128, "lr": 0.1},
}


@dataclass
class TrainConfig:
    """Everything a backbone training run depends on (``None`` = the dataset's default, see ``DEFAULTS``).

    ``classes``: the model learns classes ``0 .. classes-1``; default half of them for ``old``, all for
    ``new``/``bct``. ``subsample``: at most this many training images per class (deterministic, seeded).
    ``old``: the old model's checkpoint, required for ``bct``.
    """

    kind: str
    dataset: str
    out: str
    data: str | None = None
    download: bool = False
    classes: int | None = None
    arch: str | None = None
    depth: int | None = None
    width: int | None = None
    dim: int = 128
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    subsample: int | None = None
    old: str | None = None
    bct_weight: float = 1.0
    progress: bool = True
    command: str | None = None

    def resolved(self) -> TrainConfig:
        """A copy with the dataset defaults filled in, validated (``ValueError`` naming the bad option)."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        get_spec(self.dataset)
        values = asdict(self)
        for key, value in DEFAULTS[self.dataset].items():
            if values[key] is None:
                values[key] = value
        cfg = TrainConfig(**values)
        if cfg.arch not in ("resnet", "cnn"):
            raise ValueError(f"arch must be 'resnet' or 'cnn', got {cfg.arch!r}")
        for name in ("epochs", "batch_size", "dim", "width", "depth"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
        if cfg.lr <= 0:
            raise ValueError(f"--lr must be positive, got {cfg.lr}")
        if cfg.subsample is not None and cfg.subsample <= 0:
            raise ValueError(f"--subsample must be positive, got {cfg.subsample}")
        if cfg.kind == "bct" and not cfg.old:
            raise ValueError("bct training needs the old model: pass --old PATH/old.pt")
        return cfg


@dataclass
class TrainResult:
    """What a run produced: the trained model (eval mode), its card and the per-epoch history."""

    model: nn.Module
    card: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without a GPU is a ``ValueError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(device)


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code that uses the legacy global RNG
    torch.manual_seed(seed)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` or one per CPU core (measured fastest on 2 cores)."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def build_backbone(arch: str, dataset: str, num_classes: int, depth: int = 8, width: int = 16,
                   dim: int = 128) -> nn.Module:
    """A ``CifarResNet`` (``arch="resnet"``) or ``SmallCNN`` (``"cnn"``) for ``dataset``'s input."""
    channels = get_spec(dataset).channels
    if arch == "resnet":
        return CifarResNet(depth, width, dim, num_classes, channels)
    if arch == "cnn":
        return SmallCNN(width, dim, num_classes, channels)
    raise ValueError(f"arch must be 'resnet' or 'cnn', got {arch!r}")


def classification_step(emb: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, sums: dict[str, float], *,
                        label_smoothing: float, influence: nn.Module | None = None, bct_weight: float = 1.0,
                        ) -> torch.Tensor:
    """The training objective of old / new / BCT models: ``CE(logits) + bct_weight * L_influence(emb)``
    (the influence term only for BCT). Adds this batch's loss, CE, influence and accuracy to ``sums``."""
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss = ce
    if influence is not None:
        infl = influence(emb, labels)
        loss = ce + bct_weight * infl
        sums["influence"] = sums.get("influence", 0.0) + infl.item()
    sums["loss"] = sums.get("loss", 0.0) + loss.item()
    sums["ce"] = sums.get("ce", 0.0) + ce.item()
    sums["correct"] = sums.get("correct", 0.0) + (logits.argmax(1) == labels).float().mean().item()
    return loss


def optimise(optimizer: torch.optim.Optimizer, scheduler, loss: torch.Tensor) -> None:
    """One optimisation step on ``loss`` and one scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def _prepare_data(cfg: TrainConfig, log) -> tuple[ImageDataset, ImageDataset, int]:
    train = load_dataset(cfg.dataset, "train", cfg.data, cfg.download)
    test = load_dataset(cfg.dataset, "test", cfg.data, cfg.download)
    k = cfg.classes or (train.num_classes // 2 if cfg.kind == "old" else train.num_classes)
    train, test = select_classes(train, k), select_classes(test, k)
    if cfg.subsample:
        train = subsample_per_class(train, cfg.subsample, cfg.seed)
    log(f"{cfg.kind}: {cfg.dataset} classes 0-{k - 1}, {len(train)} training / {len(test)} test images "
        f"(from {train.source})")
    return train, test, k


def _bct_classifier(cfg: TrainConfig, train: ImageDataset, num_classes: int, device: torch.device,
                    log) -> tuple[nn.Linear, dict[str, Any]]:
    try:
        expect = {"dataset": cfg.dataset, "embedding_dim": cfg.dim, "kind": ("old", "new", "bct")}
        old_model, old_card = load_checkpoint(cfg.old, expect=expect)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot use --old for bct training: {exc}") from exc
    old_model.to(device)
    old_classes = old_model.num_classes
    if old_classes > num_classes:
        raise ValueError(f"the old model knows {old_classes} classes, more than the new model's "
                         f"{num_classes}")
    unseen = train.labels >= old_classes
    old_emb = embed_images(old_model, train.images[unseen], cfg.dataset, device=device)
    unseen_labels = torch.from_numpy(train.labels[unseen])
    classifier = extend_classifier(old_model.logit_layer().cpu(), old_emb, unseen_labels, num_classes)
    log(f"bct: old classifier ({old_classes} classes) extended to {num_classes} with class means of "
        f"{int(unseen.sum())} old embeddings")
    return classifier.to(device), {"path": str(cfg.old), "sha256": old_card.get("weights_sha256"),
                                   "classes": old_card.get("classes"), "model": old_card.get("model")}


def train_backbone(config: TrainConfig, log=None) -> TrainResult:
    """Train an ``old``, ``new`` or ``bct`` backbone per ``config``; write the checkpoint and card.

    Returns the :class:`TrainResult`; ``card["metrics"]`` has ``train_acc`` (running accuracy over the
    last epoch, on augmented images), ``test_acc`` (test split, same classes, no augmentation),
    ``loss`` (last-epoch mean), ``images_per_second`` and ``train_seconds``; for ``bct`` also
    ``old_classifier_test_acc`` (the frozen, extended old classifier applied to the new model's test
    embeddings: how well the new embeddings sit in the old space).
    """
    from .losses import BCTInfluenceLoss

    cfg = config.resolved()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    device = resolve_device(cfg.device)
    threads = configure_threads(cfg.threads) if device.type == "cpu" else None
    set_seed(cfg.seed)
    spec = get_spec(cfg.dataset)
    train, test, k = _prepare_data(cfg, log)

    model = build_backbone(cfg.arch, cfg.dataset, k, cfg.depth, cfg.width, cfg.dim).to(device)
    # channels_last: measured 1.3-1.4x faster training on this CPU (oneDNN), and the fast layout on GPUs.
    model = model.to(memory_format=torch.channels_last)
    influence, old_info = None, None
    if cfg.kind == "bct":
        classifier, old_info = _bct_classifier(cfg, train, k, device, log)
        influence = BCTInfluenceLoss(classifier).to(device)

    x_all = to_tensor_uint8(train.images, device)
    y_all = torch.from_numpy(train.labels).to(device)
    n = len(y_all)
    steps = max(1, n // cfg.batch_size)  # drop the last partial batch: BatchNorm dislikes tiny batches
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=steps, pct_start=0.3)
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    history: list[dict[str, float]] = []
    start_epoch = 0
    identity = _run_identity(cfg)
    if cfg.resume:
        state = load_resume(cfg.out)
        if state is not None:
            if state["identity"] != identity:
                raise ValueError(f"{resume_path(cfg.out)} was saved by a run with different options; "
                                 f"delete it or rerun with the same options")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            perm_gen.set_state(state["perm_gen"])
            aug_gen.set_state(state["aug_gen"].to(aug_gen.get_state().device))
            history, start_epoch = state["history"], state["epoch"]
            log(f"resuming from {resume_path(cfg.out)} after epoch {start_epoch}")
    elif resume_path(cfg.out).exists():
        log(f"note: ignoring {resume_path(cfg.out)} (pass --resume to continue it)")

    from tqdm.auto import tqdm

    t0, seen = time.perf_counter(), 0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=perm_gen).to(device)
        sums = {"loss": 0.0, "ce": 0.0, "influence": 0.0, "correct": 0.0}
        bar = tqdm(range(steps), desc=f"{cfg.kind} epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   leave=False, file=sys.stderr, mininterval=1.0)
        for step in bar:
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb = normalize_uint8(augment_batch(x_all[idx], cfg.dataset, aug_gen), cfg.dataset)
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_all[idx]
            with autocast(device):
                emb, logits = model(xb)
                loss = classification_step(emb.float(), logits.float(), yb, sums,
                                           label_smoothing=cfg.label_smoothing, influence=influence,
                                           bct_weight=cfg.bct_weight)
            optimise(optimizer, scheduler, loss)
            seen += len(idx)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}",
                                acc=f"{sums['correct'] / (step + 1):.3f}")
        record = {"epoch": epoch + 1, "loss": sums["loss"] / steps, "ce": sums["ce"] / steps,
                  "train_acc": sums["correct"] / steps, "lr": float(optimizer.param_groups[0]["lr"])}
        if influence is not None:
            record["influence"] = sums["influence"] / steps
        history.append(record)
        if epoch + 1 < cfg.epochs:
            save_resume(cfg.out, {"identity": identity, "epoch": epoch + 1, "model": model.state_dict(),
                                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "perm_gen": perm_gen.get_state(), "aug_gen": aug_gen.get_state(),
                                  "history": history})
        log(f"{cfg.kind} epoch {epoch + 1}/{cfg.epochs}: " +
            ", ".join(f"{k_}={v:.4f}" for k_, v in record.items() if k_ != "epoch"))
    seconds = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format).eval()  # as a reloaded checkpoint will be
    test_emb, test_logits = embed_images(model, test.images, cfg.dataset, device=device, logits=True)
    test_acc = float((test_logits.argmax(1).numpy() == test.labels).mean()) if len(test) else float("nan")
    metrics = {"train_acc": history[-1]["train_acc"] if history else float("nan"), "test_acc": test_acc,
               "loss": history[-1]["loss"] if history else float("nan"),
               "images_per_second": seen / seconds if seen and seconds > 0 else None,
               "train_seconds": seconds}
    if influence is not None and len(test):
        # Compatibility check: the frozen, extended old classifier applied to the new test embeddings.
        with torch.no_grad():
            old_logits = influence.old_classifier.cpu()(test_emb)
        metrics["old_classifier_test_acc"] = float((old_logits.argmax(1).numpy() == test.labels).mean())
        log(f"bct: old classifier on new test embeddings: {metrics['old_classifier_test_acc']:.4f}")
    log(f"{cfg.kind}: test accuracy {test_acc:.4f} on classes 0-{k - 1}; "
        f"{metrics['images_per_second'] or 0:.0f} training images/s on {device}")
    card = {
        "kind": cfg.kind,
        "dataset": cfg.dataset,
        "split": "train",
        "data_source": train.source,
        "classes": list(range(k)),
        "num_classes": k,
        "class_names": train.class_names[:k],
        "input": spec.card(),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "training": {
            "optimizer": "SGD(momentum=0.9, nesterov=True)", "schedule": "OneCycle(pct_start=0.3)",
            "lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size,
            "label_smoothing": cfg.label_smoothing, "subsample_per_class": cfg.subsample,
            "augmentation": {"crop_padding": spec.pad, "horizontal_flip": spec.flip},
            "train_images": len(train), "device": str(device), "threads": threads,
            "bct_weight": cfg.bct_weight if cfg.kind == "bct" else None,
        },
        "metrics": metrics,
        "history": history,
        "command": cfg.command,
    }
    if old_info is not None:
        card["old_model"] = old_info
    card = save_checkpoint(cfg.out, model.cpu(), card)
    resume_path(cfg.out).unlink(missing_ok=True)
    log(f"wrote {cfg.out} and its card")
    return TrainResult(model.eval(), card, history)


def _run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The options a resumed run must share with the interrupted one."""
    keep = ("kind", "dataset", "classes", "arch", "depth", "width", "dim", "epochs", "batch_size", "lr",
            "weight_decay", "label_smoothing", "seed", "subsample", "old", "bct_weight")
    return {k: getattr(cfg, k) for k in keep}

