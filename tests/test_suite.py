"""Tests for backfill.suite: loading a model suite, card validation, embedding and prediction."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from backfill.checkpoints import CheckpointError, save_checkpoint
from backfill.datasets import FASHION_MNIST_CLASSES
from backfill.models import EmbeddingHead, ReverseTransform, SmallCNN
from backfill.suite import METHODS, ModelSuite

D_OLD, D_NEW = 8, 12


def _record(card):
    return {"name": card["weights_file"], "sha256": card["weights_sha256"]}


def build_suite(directory, dataset="fashion_mnist", with_rho=True):
    """Save a tiny, randomly initialised suite (old on classes 0-4, new on 0-9) with consistent cards."""
    torch.manual_seed(0)
    base = {"dataset": dataset, "class_names": FASHION_MNIST_CLASSES}
    old = save_checkpoint(directory / "old.pt", SmallCNN(4, D_OLD, 5),
                          {**base, "kind": "old", "classes": list(range(5))})
    new = save_checkpoint(directory / "new.pt", SmallCNN(4, D_NEW, 10),
                          {**base, "kind": "new", "classes": list(range(10))})
    save_checkpoint(directory / "bct.pt", SmallCNN(4, D_OLD, 10),
                    {**base, "kind": "bct", "classes": list(range(10)), "old_model": _record(old)})
    against = {"dataset": dataset, "old_model": _record(old), "new_model": _record(new)}
    for name in ("psi_regression", "psi_mc"):
        save_checkpoint(directory / f"{name}.pt", ReverseTransform(D_NEW, D_OLD), {"kind": "psi", **against})
    if with_rho:
        # A non-identity rho, so that full_rho's new embeddings differ from plain new ones.
        head = EmbeddingHead(D_NEW, hidden=6)
        torch.nn.init.normal_(head.mlp[2].weight)
        rho = save_checkpoint(directory / "rho_mc.pt", head, {"kind": "rho", **against})
        save_checkpoint(directory / "psi_mc_rho.pt", ReverseTransform(D_NEW, D_OLD),
                        {"kind": "psi", **against, "rho_model": _record(rho)})
    return directory


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    return build_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)


def test_methods_match_the_design_contract():
    assert [m.name for m in METHODS] == ["old", "offline", "new_partial", "bct", "rank_merge", "rt_merge",
                                         "full", "full_rho"]
    by_name = {m.name: m for m in METHODS}
    assert (by_name["rt_merge"].strategy, by_name["rt_merge"].variant) == ("rt_merge", "base")
    assert (by_name["full"].strategy, by_name["full"].variant) == ("rt_merge", "full")
    assert (by_name["full_rho"].strategy, by_name["full_rho"].variant) == ("rt_merge", "full_rho")


def test_load_exposes_models_and_metadata(suite_dir):
    suite = ModelSuite.load(suite_dir)
    assert suite.dataset == "fashion_mnist"
    assert suite.class_names == FASHION_MNIST_CLASSES
    assert suite.old_classes == [0, 1, 2, 3, 4]
    assert suite.variants == ["base", "full", "full_rho"]
    for attr in ("old", "new", "bct", "psi_regression", "psi_mc", "psi_mc_rho", "rho_mc"):
        assert getattr(suite, attr) is not None and not getattr(suite, attr).training


def test_embed_returns_the_three_variants(suite_dir, images):
    suite = ModelSuite.load(suite_dir)
    labels = np.arange(10) % 3
    out = suite.embed(images, labels, batch_size=4)
    assert set(out) == {"base", "full", "full_rho"}
    base, full, full_rho = out["base"], out["full"], out["full_rho"]
    assert base.available == ("old", "new", "transformed", "bct")
    assert full.available == full_rho.available == ("old", "new", "transformed")
    assert base.old.shape == (10, D_OLD) and base.new.shape == (10, D_NEW) and base.bct.shape == (10, D_OLD)
    for arr in (base.old, base.new, base.transformed, base.bct, full_rho.new, full_rho.transformed):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(base.labels, labels)
    # Each variant uses its own transform: recompute from the suite's modules directly.
    new = torch.from_numpy(base.new)
    with torch.no_grad():
        np.testing.assert_allclose(base.transformed, suite.psi_regression(new).numpy(), atol=1e-5)
        np.testing.assert_allclose(full.transformed, suite.psi_mc(new).numpy(), atol=1e-5)
        rho_new = suite.rho_mc(new)
        np.testing.assert_allclose(full_rho.new, rho_new.numpy(), atol=1e-5)
        np.testing.assert_allclose(full_rho.transformed, suite.psi_mc_rho(rho_new).numpy(), atol=1e-5)
    assert not np.allclose(full_rho.new, base.new, atol=1e-3)
    np.testing.assert_array_equal(full.old, base.old)


def test_embed_batches_and_pil_inputs_agree(suite_dir, images):
    suite = ModelSuite.load(suite_dir)
    whole = suite.embed(images, batch_size=100)["base"]
    batched = suite.embed(images, batch_size=3)["base"]
    pil = suite.embed([Image.fromarray(im) for im in images])["base"]
    np.testing.assert_allclose(whole.new, batched.new, atol=1e-5)
    np.testing.assert_allclose(whole.old, pil.old, atol=1e-5)
    np.testing.assert_array_equal(whole.labels, -1)  # unlabelled: unknown
    single = suite.embed(Image.fromarray(images[0]))["base"]
    np.testing.assert_allclose(single.new, whole.new[:1], atol=1e-5)


def test_predict_uses_the_new_classifier(suite_dir, images):
    suite = ModelSuite.load(suite_dir)
    ids, probs = suite.predict(images, batch_size=4)
    assert ids.dtype == np.int64 and probs.dtype == np.float32 and probs.shape == (10, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(ids, probs.argmax(axis=1))


def test_optional_models_may_be_missing(tmp_path, images):
    build_suite(tmp_path, with_rho=False)
    for name in ("bct", "psi_regression", "psi_mc"):
        for suffix in (".pt", ".json"):
            (tmp_path / f"{name}{suffix}").unlink()
    suite = ModelSuite.load(tmp_path)
    assert suite.bct is None and suite.psi_mc is None and suite.rho_mc is None
    out = suite.embed(images)
    assert set(out) == {"base"}
    assert out["base"].available == ("old", "new")


def _copy(suite_dir, tmp_path):
    target = tmp_path / "suite"
    shutil.copytree(suite_dir, target)
    return target


def test_psi_trained_against_other_models_is_rejected(suite_dir, tmp_path):
    target = _copy(suite_dir, tmp_path)
    torch.manual_seed(1)
    save_checkpoint(target / "new.pt", SmallCNN(4, D_NEW, 10),
                    {"kind": "new", "dataset": "fashion_mnist", "classes": list(range(10))})
    with pytest.raises(CheckpointError, match="trained against new model"):
        ModelSuite.load(target)


def test_card_mismatches_are_rejected(suite_dir, tmp_path):
    target = _copy(suite_dir, tmp_path)
    card = json.loads((target / "psi_mc.json").read_text())
    card["dataset"] = "cifar100"
    (target / "psi_mc.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="psi_mc.pt is for dataset 'cifar100'"):
        ModelSuite.load(target)

    target = _copy(suite_dir, tmp_path / "b")
    old = json.loads((target / "old.json").read_text())
    new = json.loads((target / "new.json").read_text())
    against = {"dataset": "fashion_mnist", "old_model": _record(old), "new_model": _record(new)}
    save_checkpoint(target / "psi_mc.pt", ReverseTransform(D_OLD, D_OLD), {"kind": "psi", **against})
    with pytest.raises(CheckpointError, match="maps 8 -> 8 dims"):
        ModelSuite.load(target)

    target = _copy(suite_dir, tmp_path / "c")
    (target / "rho_mc.pt").unlink()
    with pytest.raises(CheckpointError, match="come together"):
        ModelSuite.load(target)

    target = _copy(suite_dir, tmp_path / "d")
    (target / "old.pt").unlink()
    with pytest.raises(CheckpointError, match="no old.pt"):
        ModelSuite.load(target)

    with pytest.raises(FileNotFoundError):
        ModelSuite.load(tmp_path / "nowhere")


def test_psi_card_without_provenance_is_rejected(suite_dir, tmp_path):
    target = _copy(suite_dir, tmp_path)
    save_checkpoint(target / "psi_regression.pt", ReverseTransform(D_NEW, D_OLD),
                    {"kind": "psi", "dataset": "fashion_mnist"})
    with pytest.raises(CheckpointError, match="does not record"):
        ModelSuite.load(target)
