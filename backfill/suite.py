"""A trained set of models for one dataset and setting, and the list of methods the project compares.

A suite directory (``pretrained/<dataset>/<setting>/``, docs/design.md) holds::

    old.pt  new.pt                       required
    bct.pt                               optional: BCT new model (embeds into the old space)
    psi_regression.pt                    optional: psi trained with the regression loss    -> variant "base"
    psi_mc.pt                            optional: psi trained with the metric-compatible loss -> "full"
    psi_mc_rho.pt + rho_mc.pt            optional, together: psi and head rho trained jointly -> "full_rho"
    gain_predictor.pt                    optional: the ``predicted_gain`` backfill order's predictor

each with its JSON card beside it. :meth:`ModelSuite.load` checks that the cards agree with each other
(one dataset, dims that fit, psi/rho trained against *these* old/new weights by SHA-256) and fails with a
:class:`~backfill.checkpoints.CheckpointError` naming the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backfill.checkpoints import CheckpointError, load_checkpoint
from backfill.embeddings import Embeddings
from backfill.images import preprocess
from backfill.methods import METHODS, VARIANTS, Method  # re-exported: the suite's methods
from backfill.ordering import classifier_entropy_priority

__all__ = ["Method", "METHODS", "VARIANTS", "ModelSuite", "SUITE_FILES", "trained_against", "check_suite_cards",
           "embed_split", "inputs_path"]



#: attribute -> (file name, card kind, required)
SUITE_FILES: dict[str, tuple[str, str, bool]] = {
    "old": ("old.pt", "old", True),
    "new": ("new.pt", "new", True),
    "bct": ("bct.pt", "bct", False),
    "psi_regression": ("psi_regression.pt", "psi", False),
    "psi_mc": ("psi_mc.pt", "psi", False),
    "psi_mc_rho": ("psi_mc_rho.pt", "psi", False),
    "rho_mc": ("rho_mc.pt", "rho", False),
    "gain_predictor": ("gain_predictor.pt", "gain_predictor", False),
}


def trained_against(card: dict[str, Any], role: str, other: dict[str, Any], name: str) -> None:
    """Check that ``card`` records ``card[role]["sha256"]`` equal to ``other``'s weights SHA-256.

    ``role`` is ``"old_model"``, ``"new_model"`` or ``"rho_model"`` (written by ``backfill train
    transform`` / ``bct``). Raises :class:`CheckpointError` when the record is missing or differs.
    """
    record = card.get(role)
    if not isinstance(record, dict) or not record.get("sha256"):
        raise CheckpointError(f"{name}: its card does not record which {role.replace('_', ' ')} it was "
                              "trained against")
    if record["sha256"] != other.get("weights_sha256"):
        raise CheckpointError(
            f"{name} was trained against {role.replace('_', ' ')} {record.get('name', '?')} "
            f"(sha256 {record['sha256'][:12]}...), not {other.get('weights_file', '?')} "
            f"(sha256 {str(other.get('weights_sha256'))[:12]}...) of this suite"
        )


def check_suite_cards(cards: dict[str, dict[str, Any]], present: set[str]) -> None:
    """Raise :class:`CheckpointError` unless the cards of the suite's models (``present``) fit together: both
    old and new, psi_mc_rho with rho_mc, one dataset, dimensions that chain, and psi / rho / bct trained
    against these very old / new weights (by SHA-256)."""
    if not {"old", "new"} <= present:
        raise CheckpointError("a model suite needs both the old and the new model")
    if ("psi_mc_rho" in present) != ("rho_mc" in present):
        raise CheckpointError("psi_mc_rho.pt and rho_mc.pt come together: one of them is missing")
    dataset = cards["old"].get("dataset")
    for attr, card in cards.items():
        if card.get("dataset") != dataset:
            raise CheckpointError(f"{SUITE_FILES[attr][0]} is for dataset {card.get('dataset')!r}, but "
                                  f"old.pt is for {dataset!r}")
    d_old, d_new = cards["old"]["embedding_dim"], cards["new"]["embedding_dim"]
    if "bct" in present:
        if cards["bct"]["embedding_dim"] != d_old:
            raise CheckpointError(f"bct.pt embeds into {cards['bct']['embedding_dim']} dims but the old "
                                  f"space has {d_old}")
        if "old_model" in cards["bct"]:
            trained_against(cards["bct"], "old_model", cards["old"], "bct.pt")
    for attr in ("psi_regression", "psi_mc", "psi_mc_rho"):
        if attr not in cards:
            continue
        name, spec = SUITE_FILES[attr][0], cards[attr]["model"]
        if spec.get("d_in") != d_new or spec.get("d_out") != d_old:
            raise CheckpointError(f"{name} maps {spec.get('d_in')} -> {spec.get('d_out')} dims, but the "
                                  f"suite needs new {d_new} -> old {d_old}")
        trained_against(cards[attr], "old_model", cards["old"], name)
        trained_against(cards[attr], "new_model", cards["new"], name)
    if "rho_mc" in present:
        if cards["rho_mc"]["model"].get("d") != d_new:
            raise CheckpointError(f"rho_mc.pt works on {cards['rho_mc']['model'].get('d')} dims, the new "
                                  f"model has {d_new}")
        trained_against(cards["rho_mc"], "new_model", cards["new"], "rho_mc.pt")
        trained_against(cards["psi_mc_rho"], "rho_model", cards["rho_mc"], "psi_mc_rho.pt")
    if "gain_predictor" in present:
        if cards["gain_predictor"]["model"].get("d_old") != d_old:
            raise CheckpointError(f"gain_predictor.pt reads {cards['gain_predictor']['model'].get('d_old')}-dim "
                                  f"old embeddings, the old model has {d_old}")
        trained_against(cards["gain_predictor"], "old_model", cards["old"], "gain_predictor.pt")
        trained_against(cards["gain_predictor"], "new_model", cards["new"], "gain_predictor.pt")



def _as_sequence(images: Any) -> Any:
    """An ndarray or list stays as it is; a single image (PIL, path, bytes) becomes a one-item list."""
    if isinstance(images, (np.ndarray, list, tuple)):
        if len(images) == 0:
            raise ValueError("no images given")
        return images
    return [images]


class ModelSuite:
    """Models of one dataset and setting: ``old``, ``new`` and the optional ``bct``, ``psi_regression``,
    ``psi_mc``, ``psi_mc_rho``, ``rho_mc``, ``gain_predictor`` (``None`` when absent), all in eval mode on
    ``device``.

    Attributes
    ----------
    dataset : str, dataset name (input preprocessing).
    class_names : list of str, every class of the dataset (index = label).
    old_classes : list of int, the classes the old model was trained on.
    cards : dict attribute -> card of each loaded checkpoint.
    directory : Path the suite was loaded from (or None).
    """

    def __init__(self, models: dict[str, nn.Module | None], cards: dict[str, dict[str, Any]],
                 device: str | torch.device = "cpu", directory: Path | None = None) -> None:
        self.device = torch.device(device)
        self.cards = cards
        self.directory = directory
        for attr in SUITE_FILES:
            model = models.get(attr)
            setattr(self, attr, None if model is None else model.eval().to(self.device))
        check_suite_cards(cards, present={attr for attr in SUITE_FILES if models.get(attr) is not None})
        old_card, new_card = cards["old"], cards["new"]
        self.dataset: str = old_card["dataset"]
        self.class_names: list[str] = list(new_card.get("class_names") or old_card.get("class_names") or [])
        self.old_classes: list[int] = [int(c) for c in old_card.get("classes", [])]

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> ModelSuite:
        """Load a suite directory (layout in the module docstring); validate the cards against each other.

        Raises ``FileNotFoundError`` if the directory does not exist, :class:`CheckpointError` (a
        ``ValueError``) for a missing required checkpoint, a damaged file or cards that disagree.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model suite directory {directory} not found")
        models: dict[str, nn.Module | None] = {}
        cards: dict[str, dict[str, Any]] = {}
        for attr, (file, kind, required) in SUITE_FILES.items():
            path = directory / file
            if not path.exists():
                if required:
                    raise CheckpointError(f"model suite {directory} has no {file} (required)")
                models[attr] = None
                continue
            models[attr], cards[attr] = load_checkpoint(path, expect={"kind": kind}, map_location=device)
        return cls(models, cards, device, directory)

    # ------------------------------------------------------------------------------------------ inference
    @property
    def variants(self) -> list[str]:
        """The keys :meth:`embed` returns: ``"base"`` always, ``"full"`` / ``"full_rho"`` when trained."""
        out = ["base"]
        if self.psi_mc is not None:
            out.append("full")
        if self.psi_mc_rho is not None:
            out.append("full_rho")
        return out

    @torch.inference_mode()
    def embed_arrays(self, images: Any, batch_size: int = 256, progress: bool = False,
                     on_progress: Callable[[int, int, str], None] | None = None, *,
                     whole_split: bool = False) -> dict[str, np.ndarray]:
        """Every embedding the suite can make, as float32 C-contiguous arrays ``(n, d)``.

        Keys (present when their models are): ``old``, ``new``, ``bct``, ``transformed`` (psi_regression of
        new), ``transformed_mc`` (psi_mc of new), ``new_rho`` (rho_mc of new), ``transformed_mc_rho``
        (psi_mc_rho of new_rho). Each batch is preprocessed once (:func:`backfill.images.preprocess`) and fed
        to every backbone; the heads run on the new embedding. Frozen pretrained backbones run once per
        batch whatever the number of heads on them. With ``whole_split`` (a whole gallery or split as one
        array) their features come from the disk cache keyed by the images' digest
        (``backbones.dataset_features``, computed once; ``on_progress(done, total, backbone)`` follows that
        computation); batches and probes are computed live, so they never fill the cache.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        images = _as_sequence(images)
        n = len(images)
        parts: dict[str, list[torch.Tensor]] = {}
        backbones = [m for m in (self.old, self.new, self.bct) if _is_pretrained(m)]
        cached: dict[tuple, np.ndarray] = {}
        if whole_split and isinstance(images, np.ndarray) and backbones:
            # A dataset split: every frozen backbone's features come from the disk cache (computed once).
            from backfill.backbones import dataset_features

            for model in backbones:
                if model.backbone_key not in cached:
                    name, dataset, resolution = model.backbone_key
                    cached[model.backbone_key] = dataset_features(name, images, dataset=dataset,
                                                                  resolution=resolution, progress=progress,
                                                                  on_progress=on_progress)

        def put(key: str, value: torch.Tensor) -> None:
            parts.setdefault(key, []).append(value.float().cpu())

        for start in tqdm(range(0, n, batch_size), desc="embed", disable=not progress, leave=False):
            batch = images[start:start + batch_size]
            pixels_needed = not cached or _needs_pixels((self.old, self.new, self.bct))
            x = preprocess(batch, self.dataset).to(self.device) if pixels_needed else None
            # One backbone pass per distinct frozen backbone and batch, shared by every head on it.
            feats = {key: torch.from_numpy(value[start:start + batch_size]).to(self.device)
                     for key, value in cached.items()}
            new = _embed(self.new, x, feats)
            put("old", _embed(self.old, x, feats))
            put("new", new)
            if self.bct is not None:
                put("bct", _embed(self.bct, x, feats))
            if self.psi_regression is not None:
                put("transformed", self.psi_regression(new))
            if self.psi_mc is not None:
                put("transformed_mc", self.psi_mc(new))
            if self.rho_mc is not None:
                new_rho = self.rho_mc(new)
                put("new_rho", new_rho)
                put("transformed_mc_rho", self.psi_mc_rho(new_rho))
        return {k: np.ascontiguousarray(torch.cat(v).numpy(), dtype=np.float32) for k, v in parts.items()}

    def embed(self, images: Any, labels: np.ndarray | None = None, batch_size: int = 256,
              progress: bool = False, on_progress: Callable[[int, int, str], None] | None = None, *,
              whole_split: bool = False) -> dict[str, Embeddings]:
        """Embed images into the bundles the engine evaluates, one per available variant.

        Parameters
        ----------
        images : uint8 ndarray ``(n, H, W[, C])`` or a list of PIL images / paths / bytes (the same
            preprocessing path as uploads, :func:`backfill.images.preprocess`).
        labels : int64 ``(n,)``; ``None`` (unlabelled uploads): all -1 ("unknown", never relevant).
        batch_size, progress : batching and a tqdm bar.

        Returns
        -------
        ``{"base": Embeddings(labels, old, new, transformed=psi_regression(new) or None, bct=bct or None),
        "full": Embeddings(labels, old, new, transformed=psi_mc(new))`` (if psi_mc),
        ``"full_rho": Embeddings(labels, old, new=rho(new), transformed=psi_mc_rho(rho(new)))}`` (if rho).
        """
        arrays = self.embed_arrays(images, batch_size, progress, on_progress, whole_split=whole_split)
        out = {"base": Embeddings(labels, arrays["old"], arrays["new"], transformed=arrays.get("transformed"),
                                  bct=arrays.get("bct"))}
        if "transformed_mc" in arrays:
            out["full"] = Embeddings(labels, arrays["old"], arrays["new"],
                                     transformed=arrays["transformed_mc"])
        if "transformed_mc_rho" in arrays:
            out["full_rho"] = Embeddings(labels, arrays["old"], arrays["new_rho"],
                                         transformed=arrays["transformed_mc_rho"])
        return out

    @property
    def uses_pretrained_backbones(self) -> bool:
        """Whether some model is a head on a frozen pretrained backbone (its features are cached per split)."""
        return any(_is_pretrained(m) for m in (self.old, self.new, self.bct))

    def old_entropy_priority(self, old_embeddings: np.ndarray) -> np.ndarray:
        """Deployable backfill priority: entropy of the old model's own classifier (its exact logits,
        ``logit_layer()``) on stored old embeddings ``(n, d_o)``; returns ``(n,)`` float64, uncertain first
        once fed to :func:`backfill.ordering.order_by_score`. Needs no new embedding and no training data."""
        return classifier_entropy_priority(old_embeddings, self.old.logit_layer().weight.cpu().numpy())

    @torch.inference_mode()
    def predict(self, images: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Classify with the new model: ``(class ids int64 (n,), probabilities float32 (n, C))``."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        images = _as_sequence(images)
        probs = []
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size], self.dataset).to(self.device)
            _, logits = self.new(x)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
        p = np.ascontiguousarray(torch.cat(probs).numpy(), dtype=np.float32)
        return p.argmax(axis=1).astype(np.int64), p


def _is_pretrained(model: nn.Module | None) -> bool:
    """A head on a frozen pretrained backbone (``backbones.PretrainedNet``)?"""
    return model is not None and getattr(model, "spec", {}).get("arch") == "pretrained"


def _embed(model: nn.Module, x: torch.Tensor | None, feats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """``model``'s embedding of the preprocessed batch ``x``; heads on a frozen backbone reuse (or fill)
    ``feats[backbone_key]``, so each backbone runs once per batch however many heads share it."""
    if not _is_pretrained(model):
        return model.embed(x)
    if model.backbone_key not in feats:
        feats[model.backbone_key] = model.frozen_backbone()(x)
    return model.embed_features(feats[model.backbone_key])


def _needs_pixels(models: tuple[nn.Module | None, ...]) -> bool:
    return any(m is not None and not _is_pretrained(m) for m in models)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def inputs_path(out: str | os.PathLike) -> Path:
    """The record of what an ``EMB.npz`` was made from: ``x/emb.npz`` -> ``x/emb.inputs.json``."""
    return Path(out).with_suffix(".inputs.json")


def embed_split(
    suite_dir: str | os.PathLike, dataset: str, out: str | os.PathLike, data: str | os.PathLike | None = None,
    download: bool = False, split: str = "test", variant: str = "base", batch_size: int = 256,
    device: str = "auto", force: bool = False, progress: bool = True,
) -> tuple[Path, bool]:
    """Embed a dataset split with a suite and write the ``EMB.npz`` of ``backfill evaluate``.

    The file holds ``labels`` and the arrays of ``suite.embed(...)[variant]`` (``old``, ``new`` and, as
    available, ``transformed``, ``bct``). Beside it, ``EMB.inputs.json`` (:func:`inputs_path`) records the
    SHA-256 of every suite weights file, of the images and labels, and the dataset/split/variant; when
    ``out`` exists and that record matches, nothing is recomputed (unless ``force``).

    Returns ``(out path, reused)``. Raises ``ValueError`` when the suite is for another dataset or lacks
    the models the variant needs.
    """
    from backfill.datasets import load_dataset
    from backfill.training import resolve_device

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    suite_dir, out = Path(suite_dir), Path(out)
    if not suite_dir.is_dir():
        raise FileNotFoundError(f"model suite directory {suite_dir} not found")
    ds = load_dataset(dataset, split, data, download)
    digest = hashlib.sha256(np.ascontiguousarray(ds.images).data)
    digest.update(np.ascontiguousarray(ds.labels).data)
    record = {
        "suite": {file: _file_sha256(suite_dir / file) for file, _, _ in SUITE_FILES.values()
                  if (suite_dir / file).is_file()},
        "dataset": dataset, "split": split, "variant": variant, "n": len(ds),
        "images_labels_sha256": digest.hexdigest(),
    }
    record_path = inputs_path(out)
    if not force and out.is_file() and record_path.is_file():
        try:
            if json.loads(record_path.read_text()) == record:
                return out, True
        except json.JSONDecodeError:
            pass  # a damaged record: recompute
    suite = ModelSuite.load(suite_dir, device=resolve_device(device))
    if suite.dataset != dataset:
        raise ValueError(f"the suite in {suite_dir} is for {suite.dataset!r}, not {dataset!r}")
    if variant not in suite.variants:
        need = {"full": "psi_mc.pt", "full_rho": "psi_mc_rho.pt and rho_mc.pt"}[variant]
        raise ValueError(f"variant {variant!r} needs {need} in {suite_dir}")
    bundle = suite.embed(ds.images, ds.labels, batch_size=batch_size, progress=progress, whole_split=True)[variant]
    out.parent.mkdir(parents=True, exist_ok=True)
    bundle.save(out)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return out, False
