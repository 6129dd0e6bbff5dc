"""Builders shared by the explorer, app and browser tests: a tiny trained Fashion-MNIST suite and a fake
CIFAR-100 (data directory and untrained suite). Imported by those modules (the tests directory is on
``sys.path``), so no test module imports another."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from backfill.checkpoints import save_checkpoint
from backfill.datasets import FASHION_MNIST_CLASSES, load_dataset
from backfill.gain_prediction import fit_gain_predictor
from backfill.images import preprocess
from backfill.models import CifarResNet, EmbeddingHead, ReverseTransform, SmallCNN


def _record(card: dict) -> dict:
    return {"name": card["weights_file"], "sha256": card["weights_sha256"]}


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        _, logits = model(x[batch])
        loss = torch.nn.functional.cross_entropy(logits, y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def _fit_psi(psi: ReverseTransform, new: torch.Tensor, old: torch.Tensor, steps: int) -> None:
    optimiser = torch.optim.Adam(psi.parameters(), lr=1e-2)
    psi.train()
    for _ in range(steps):
        loss = ((psi(new) - old) ** 2).sum(dim=1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    psi.eval()


def build_quick_suite(directory: Path, steps: int = 40) -> Path:
    """Train and save a tiny Fashion-MNIST suite (old: classes 0-4, new: 0-9, BCT-free) in ``directory``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is several times faster on a busy 2-core machine
    try:
        return _build_quick_suite(directory, steps)
    finally:
        torch.set_num_threads(threads)


def _build_quick_suite(directory: Path, steps: int) -> Path:
    torch.manual_seed(0)
    data = load_dataset("fashion_mnist", "test")
    x_all = preprocess(data.images[:2000], "fashion_mnist")
    y_all = torch.as_tensor(data.labels[:2000])
    base = {"dataset": "fashion_mnist", "class_names": FASHION_MNIST_CLASSES}
    old_model, new_model = SmallCNN(8, 16, 5), SmallCNN(8, 16, 10)
    seen = y_all < 5
    _fit(old_model, x_all[seen], y_all[seen], steps)
    _fit(new_model, x_all, y_all, steps)
    directory.mkdir(parents=True, exist_ok=True)
    old = save_checkpoint(directory / "old.pt", old_model, {**base, "kind": "old", "classes": [*range(5)]})
    new = save_checkpoint(directory / "new.pt", new_model, {**base, "kind": "new", "classes": [*range(10)]})
    with torch.no_grad():
        old_emb, new_emb = old_model.embed(x_all[:1000]), new_model.embed(x_all[:1000])
    against = {"dataset": "fashion_mnist", "old_model": _record(old), "new_model": _record(new)}
    for name, psi_steps in (("psi_regression", steps), ("psi_mc", 3 * steps)):
        psi = ReverseTransform(16, 16)
        _fit_psi(psi, new_emb, old_emb, psi_steps)
        save_checkpoint(directory / f"{name}.pt", psi, {"kind": "psi", **against})
    rho = save_checkpoint(directory / "rho_mc.pt", EmbeddingHead(16), {"kind": "rho", **against})
    psi = ReverseTransform(16, 16)
    _fit_psi(psi, new_emb, old_emb, steps)
    save_checkpoint(directory / "psi_mc_rho.pt", psi, {"kind": "psi", **against, "rho_model": _record(rho)})
    predictor = fit_gain_predictor(old_emb.numpy(), new_emb.numpy(), data.labels[:1000], epochs=5)
    save_checkpoint(directory / "gain_predictor.pt", predictor, {"kind": "gain_predictor", **against})
    return directory


def quick_suite_dir(pytestconfig) -> Path:
    """The quick suite, built once and kept in pytest's cache directory (rebuilt when it fails to load)."""
    from backfill.suite import ModelSuite

    cache = getattr(pytestconfig, "cache", None)  # None under `-p no:cacheprovider`
    directory = cache.mkdir("backfill-quick-suite-v2") if cache else Path(tempfile.mkdtemp(prefix="quick-suite-"))
    try:
        ModelSuite.load(directory)
    except (FileNotFoundError, ValueError):
        build_quick_suite(directory)
    return directory


def fake_cifar(tmp_path: Path) -> tuple[Path, Path]:
    """A CIFAR-100-layout data directory (3 random images per class) and an untrained CIFAR suite."""
    data = tmp_path / "cifar"
    data.mkdir()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 3).astype(np.uint8)
    images = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
    np.savez(data / "test.npz", images=images, labels=labels)
    names = [f"class_{i}" for i in range(100)]
    (data / "classes.json").write_text(json.dumps({"classes": names}))
    suite = tmp_path / "suite"
    base = {"dataset": "cifar100", "class_names": names}
    old = save_checkpoint(suite / "old.pt", CifarResNet(8, 4, 16, 50),
                          {**base, "kind": "old", "classes": [*range(50)]})
    new = save_checkpoint(suite / "new.pt", CifarResNet(8, 4, 16, 100),
                          {**base, "kind": "new", "classes": [*range(100)]})
    record = {name: {"name": card["weights_file"], "sha256": card["weights_sha256"]}
              for name, card in (("old_model", old), ("new_model", new))}
    save_checkpoint(suite / "psi_mc.pt", ReverseTransform(16, 16), {"kind": "psi", "dataset": "cifar100", **record})
    return data, suite
