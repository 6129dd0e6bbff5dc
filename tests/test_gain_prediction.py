"""The predicted_gain order: a regressor from old embeddings to oracle_priority's margin gain, its checkpoint and
the suites that hold one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backfill.checkpoints import CheckpointError, save_checkpoint
from backfill.cli import main
from backfill.embeddings import Embeddings, l2_normalize
from backfill.gain_prediction import GainPredictor, fit_gain_predictor, train_gain_predictor
from backfill.methods import make_order
from backfill.models import CifarResNet
from backfill.ordering import order_by_score
from backfill.suite import ModelSuite


def planted_split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four classes. The old model separates classes 0 and 1 and lumps 2 and 3 together around one direction
    (classes it never saw); the new model separates all four. So items of classes 2 and 3 gain most."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    old_centre = np.eye(8)[[0, 1, 2, 2]]
    new_centre = np.eye(8)[[0, 1, 2, 3]]
    old = l2_normalize((old_centre[labels] + 0.3 * rng.standard_normal((labels.size, 8))).astype(np.float32))
    new = l2_normalize((new_centre[labels] + 0.3 * rng.standard_normal((labels.size, 8))).astype(np.float32))
    return old, new, labels


def test_the_predictor_ranks_the_items_the_new_model_improves_first():
    predictor = fit_gain_predictor(*planted_split(200, seed=0), epochs=10)
    old, new, labels = planted_split(50, seed=1)  # a gallery the predictor never saw
    order = make_order("predicted_gain", Embeddings(labels, old, new), gain_predictor=predictor.priority)
    first_half = labels[order[: order.size // 2]]
    assert np.isin(first_half, [2, 3]).mean() > 0.9
    np.testing.assert_array_equal(order, order_by_score(predictor.priority(old)))


def test_fitting_is_seeded():
    split = planted_split(20, seed=0)
    a, b = (fit_gain_predictor(*split, epochs=2, seed=3).priority(split[0]) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fit_gain_predictor(*split, epochs=2, seed=4).priority(split[0]))


def test_bad_inputs_are_clear_errors():
    old, new, labels = planted_split(5, seed=0)
    with pytest.raises(ValueError, match="all equal"):  # the new model places every item as the old one does
        fit_gain_predictor(old, old, labels)
    with pytest.raises(ValueError, match="hidden"):
        GainPredictor(8, hidden=0)
    with pytest.raises(ValueError, match="needs a gain predictor"):
        make_order("predicted_gain", Embeddings(labels, old, new))


def fake_cifar_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A CIFAR-100-layout data directory (train and test, 2 random images per class) and an untrained suite."""
    data, suite = tmp_path / "cifar", tmp_path / "suite"
    data.mkdir()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 2).astype(np.uint8)
    for split in ("train", "test"):
        np.savez(data / f"{split}.npz", images=rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8),
                 labels=labels)
    (data / "classes.json").write_text(json.dumps({"classes": [f"class_{i}" for i in range(100)]}))
    torch.manual_seed(0)
    for kind, classes in (("old", 50), ("new", 100)):
        save_checkpoint(suite / f"{kind}.pt", CifarResNet(8, 4, 16, classes),
                        {"kind": kind, "dataset": "cifar100", "classes": [*range(classes)]})
    return data, suite


def test_the_cli_writes_a_predictor_the_suite_loads_and_orders_with(tmp_path, capsys):
    data, suite = fake_cifar_pair(tmp_path)
    out = suite / "gain_predictor.pt"
    assert main(["train", "gain-predictor", "--dataset", "cifar100", "--data", str(data), "--old",
                 str(suite / "old.pt"), "--new", str(suite / "new.pt"), "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert "rank correlation" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["kind"] == "gain_predictor" and card["training"]["view"] == "flip+crop"
    assert card["training"]["rows"] == 400 and -1 <= card["metrics"]["test_rank_correlation"] <= 1
    loaded = ModelSuite.load(suite)
    assert isinstance(loaded.gain_predictor, GainPredictor)
    old = l2_normalize(np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32))
    gallery = Embeddings(np.zeros(30, dtype=np.int64), old, old)
    np.testing.assert_array_equal(make_order("predicted_gain", gallery, suite=loaded),
                                  order_by_score(loaded.gain_predictor.priority(old)))


def test_a_predictor_fitted_for_other_models_is_refused(tmp_path):
    data, suite = fake_cifar_pair(tmp_path)
    other = tmp_path / "other"
    save_checkpoint(other / "new.pt", CifarResNet(8, 4, 16, 100), {"kind": "new", "dataset": "cifar100"})
    train_gain_predictor(suite / "old.pt", other / "new.pt", suite / "gain_predictor.pt", data=data, epochs=1,
                         progress=False)
    with pytest.raises(CheckpointError, match="gain_predictor.pt was trained against new model"):
        ModelSuite.load(suite)
    (suite / "gain_predictor.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError):
        ModelSuite.load(suite)
