"""Training the heads of frozen pretrained backbones (``old``, ``new``, ``bct``) on cached features.

The backbone (:mod:`backfill.backbones`) never changes, so its features of the train and test splits are
computed once and cached; a head (1280 -> hidden -> embedding, cosine classifier) then trains in seconds
per epoch on the CPU. Same protocol as the end-to-end backbones (:mod:`backfill.training`): ``old`` learns
classes ``0..K-1`` (default half), ``new`` all of them, ``bct`` adds BCT's influence loss through the
frozen old classifier extended to the new classes with the class means of old embeddings.

Choices: AdamW with a OneCycle schedule and label smoothing 0.1; features are cached for the whole split
(one cache shared by old, new and bct) and rows are selected afterwards. ``view`` names the views of the
train images the head learns from (:func:`backfill.augmentation.parse_views`; ``"clean+flip"``: the mirrored
images too, each image's view picked per epoch at random).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from backfill.augmentation import parse_views
from backfill.backbones import BACKBONES, DEFAULT_RESOLUTION, PretrainedNet, dataset_features, load_backbone
from backfill.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from backfill.datasets import get_spec, load_dataset
from backfill.inference import embed_dataset
from backfill.models import extend_classifier
from backfill.training import (
    KINDS,
    TrainResult,
    classification_step,
    configure_threads,
    optimise,
    resolve_device,
    set_seed,
)

__all__ = ["HeadConfig", "train_head"]


@dataclass(frozen=True)
class HeadConfig:
    """Everything a head training run depends on. ``classes``: learn ``0..classes-1`` (default: half for
    ``old``, all for ``new``/``bct``); ``old``: the old checkpoint, required for ``bct``."""

    kind: str
    backbone: str
    dataset: str
    out: str
    data: str | None = None
    download: bool = False
    classes: int | None = None
    old: str | None = None
    resolution: int = DEFAULT_RESOLUTION
    hidden: int = 512
    dim: int = 128
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    # 8, not the from-scratch CNNs' 16 (and 30 epochs, not 60): a held-out sweep (benchmarks/README.md) found the
    # heads' new/new mAP higher and the two spaces' scores far closer (rank merge 45% vs 14% relative gain).
    logit_scale: float = 8.0
    view: str = "clean"
    bct_weight: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    command: str | None = None

    def validated(self) -> HeadConfig:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of {sorted(BACKBONES)}")
        get_spec(self.dataset)
        for name in ("epochs", "batch_size", "hidden", "dim", "resolution"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr", "logit_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        parse_views(self.view)
        if self.kind == "bct" and not self.old:
            raise ValueError("bct training needs the old model: pass --old PATH/old.pt")
        return self


def _split_features(cfg: HeadConfig, images: np.ndarray, view: str) -> np.ndarray:
    return dataset_features(cfg.backbone, images, dataset=cfg.dataset, resolution=cfg.resolution, view=view,
                            progress=cfg.progress)


def _bct_classifier(cfg: HeadConfig, train_images: np.ndarray, train_labels: np.ndarray, num_classes: int,
                    log) -> tuple[torch.nn.Linear, dict[str, Any]]:
    try:
        old_model, old_card = load_checkpoint(cfg.old, expect={"dataset": cfg.dataset, "embedding_dim": cfg.dim,
                                                               "kind": ("old", "new", "bct")})
    except CheckpointError as exc:
        raise CheckpointError(f"cannot use --old for bct training: {exc}") from exc
    old_classes = old_model.num_classes
    if old_classes > num_classes:
        raise ValueError(f"the old model knows {old_classes} classes, more than the new model's {num_classes}")
    unseen = train_labels >= old_classes
    old_emb = embed_dataset(old_model, train_images, cfg.dataset, progress=cfg.progress)[torch.from_numpy(unseen)]
    classifier = extend_classifier(old_model.logit_layer(), old_emb, torch.from_numpy(train_labels[unseen]),
                                   num_classes)
    log(f"bct: old classifier ({old_classes} classes) extended to {num_classes} with class means of "
        f"{int(unseen.sum())} old embeddings")
    return classifier, {"path": str(cfg.old), "sha256": old_card.get("weights_sha256"),
                        "classes": old_card.get("classes"), "model": old_card.get("model")}


def train_head(config: HeadConfig, log=None) -> TrainResult:
    """Train an ``old``, ``new`` or ``bct`` head on a frozen backbone; write the checkpoint and card.

    ``card["metrics"]``: ``train_acc`` (last epoch), ``test_acc`` (test split, same classes), ``loss``,
    ``train_seconds`` (the head alone: features come from the cache) and, for ``bct``,
    ``old_classifier_test_acc`` (the extended old classifier on the new test embeddings).
    """
    from backfill.losses import BCTInfluenceLoss

    cfg = config.validated()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    device = resolve_device(cfg.device)
    threads = configure_threads(cfg.threads) if device.type == "cpu" else None
    set_seed(cfg.seed)
    train = load_dataset(cfg.dataset, "train", cfg.data, cfg.download)
    test = load_dataset(cfg.dataset, "test", cfg.data, cfg.download)
    k = cfg.classes or (train.num_classes // 2 if cfg.kind == "old" else train.num_classes)
    keep_train, keep_test = train.labels < k, test.labels < k
    log(f"{cfg.kind}: {cfg.dataset} classes 0-{k - 1} on {cfg.backbone} features at {cfg.resolution} px, "
        f"{int(keep_train.sum())} training / {int(keep_test.sum())} test images (from {train.source})")
    views = [_split_features(cfg, train.images, view)[keep_train] for view in parse_views(cfg.view)]
    x_views = torch.from_numpy(np.stack(views)).to(device)  # (views, n, 1280)
    y = torch.from_numpy(train.labels[keep_train]).long().to(device)
    x_test = torch.from_numpy(_split_features(cfg, test.images, "clean")[keep_test]).to(device)
    y_test = test.labels[keep_test]

    model = PretrainedNet(cfg.backbone, cfg.dataset, cfg.resolution, cfg.hidden, cfg.dim, k,
                          logit_scale=cfg.logit_scale).to(device)
    influence, old_info = None, None
    if cfg.kind == "bct":
        classifier, old_info = _bct_classifier(cfg, train.images, train.labels, k, log)
        influence = BCTInfluenceLoss(classifier.to(device)).to(device)
    n = len(y)
    steps = max(1, n // cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    for epoch in tqdm(range(cfg.epochs), desc=f"{cfg.kind} head", disable=not cfg.progress, file=sys.stderr):
        model.train()
        perm = torch.randperm(n, generator=gen)
        view = torch.randint(0, len(x_views), (n,), generator=gen)
        sums: dict[str, float] = {}
        for step in range(steps):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            emb, logits = model.forward_features(x_views[view[idx].to(device), idx.to(device)])
            loss = classification_step(emb, logits, y[idx.to(device)], sums, label_smoothing=cfg.label_smoothing,
                                       influence=influence, bct_weight=cfg.bct_weight)
            optimise(optimizer, scheduler, loss)
        history.append({"epoch": epoch + 1, **{key: value / steps for key, value in sums.items() if key != "correct"},
                        "train_acc": sums["correct"] / steps})
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        test_emb, test_logits = model.forward_features(x_test)
    test_acc = float((test_logits.argmax(1).cpu().numpy() == y_test).mean())
    metrics = {"train_acc": history[-1]["train_acc"], "test_acc": test_acc, "loss": history[-1]["loss"],
               "train_seconds": seconds}
    if influence is not None:
        with torch.no_grad():
            old_logits = influence.old_classifier(test_emb)
        metrics["old_classifier_test_acc"] = float((old_logits.argmax(1).cpu().numpy() == y_test).mean())
    log(f"{cfg.kind}: test accuracy {test_acc:.4f} on classes 0-{k - 1} ({seconds:.0f} s for the head)")
    backbone = load_backbone(cfg.backbone, cfg.dataset, cfg.resolution)
    card = {
        "kind": cfg.kind, "dataset": cfg.dataset, "split": "train", "data_source": train.source,
        "classes": list(range(k)), "num_classes": k, "class_names": train.class_names[:k],
        "input": get_spec(cfg.dataset).card(),
        "backbone": {"name": cfg.backbone, "weights_sha256": backbone.weights_sha256, "frozen": True,
                     "resolution": cfg.resolution, "features": f"global-average-pooled {backbone.feature_dim}-d",
                     "views": parse_views(cfg.view)},
        "epochs": cfg.epochs, "seed": cfg.seed,
        "training": {"optimizer": "AdamW", "schedule": "OneCycle(pct_start=0.2)",
                     **{key: value for key, value in asdict(cfg).items()
                        if key in ("lr", "weight_decay", "batch_size", "label_smoothing", "logit_scale", "hidden")},
                     "train_images": n, "device": str(device), "threads": threads,
                     "bct_weight": cfg.bct_weight if cfg.kind == "bct" else None},
        "metrics": metrics, "history": history, "command": cfg.command,
    }
    if old_info is not None:
        card["old_model"] = old_info
    card = save_checkpoint(cfg.out, model.cpu(), card)
    log(f"wrote {cfg.out} and its card")
    return TrainResult(model.eval(), card, history)


def default_config(**options: Any) -> HeadConfig:
    """A :class:`HeadConfig` from keyword options, ``None`` values meaning the default."""
    base = HeadConfig(kind=options.pop("kind"), backbone=options.pop("backbone"), dataset=options.pop("dataset"),
                      out=options.pop("out"))
    return replace(base, **{key: value for key, value in options.items() if value is not None})
