"""Tests for backfill.transform_training (psi / rho training on cached features)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backfill.augmentation import view_images
from backfill.datasets import ImageDataset
from backfill.inference import embed_images
from backfill.models import SmallCNN
from backfill.transform_training import (
    TransformConfig,
    cache_features,
    cached_features,
    class_balanced_batches,
    default_rho_path,
    fit_transform,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def features():
    """Old and new features of the same latent points through different random maps (n=240, 6 classes)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 40)
    latent = rng.normal(size=(6, 10))[labels] + 0.4 * rng.normal(size=(240, 10))
    old = _unit(latent @ rng.normal(size=(10, 8)))
    new = _unit(np.tanh(latent @ rng.normal(size=(10, 12))))
    return old, new, labels.astype(np.int64)


def _mean_cos(psi, new, old):
    with torch.no_grad():
        out = psi(torch.from_numpy(new)).numpy()
    return float((out * old).sum(axis=1).mean())


@pytest.mark.parametrize("loss", ["regression", "mc"])
def test_fit_transform_lowers_loss_and_maps_new_onto_old(features, loss):
    old, new, labels = features
    untrained = fit_transform(old, new, labels, TransformConfig(loss=loss, epochs=1, lr=1e-12, batch_size=48,
                                                                samples_per_class=8), progress=False)[0]
    config = TransformConfig(loss=loss, epochs=15, batch_size=48, samples_per_class=8, lr=1e-2)
    psi, rho, history = fit_transform(old, new, labels, config, progress=False)
    assert rho is None
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert _mean_cos(psi, new, old) > _mean_cos(untrained, new, old) + 0.3
    assert psi.spec == {"arch": "psi", "d_in": 12, "d_out": 8, "hidden": 24}
    assert not psi.training


def test_fit_transform_with_rho_and_callback(features):
    old, new, labels = features
    seen = []

    def callback(epoch, psi, rho):
        seen.append((epoch, psi.training, rho.training))
        return {"val": float(epoch)}

    config = TransformConfig(loss="mc", denominator="joint", rho=True, epochs=3, batch_size=48)
    psi, rho, history = fit_transform(old, new, labels, config, progress=False, callback=callback)
    assert rho is not None and rho.spec["d"] == 12
    assert seen == [(1, False, False), (2, False, False), (3, False, False)]
    assert [row["val"] for row in history] == [1.0, 2.0, 3.0]
    assert {"loss", "mc", "regression", "lr"} <= set(history[0])
    # rho moved away from its identity initialisation.
    assert not torch.allclose(rho.linear.weight, torch.eye(12))


def test_rho_anchor_keeps_rho_near_the_new_model(features):
    old, new, labels = features
    x = torch.from_numpy(new)

    def drift(anchor: float) -> float:
        config = TransformConfig(loss="mc", rho=True, rho_anchor=anchor, epochs=10, batch_size=48, lr=1e-2)
        rho = fit_transform(old, new, labels, config, progress=False)[1]
        with torch.no_grad():
            return float((rho(x) - x).pow(2).sum(dim=1).mean())

    free, anchored = drift(0.0), drift(100.0)
    assert free > 0.05  # unanchored, rho moves the new embeddings
    assert anchored < 0.2 * free
    assert TransformConfig(loss="mc", rho=True, rho_anchor=3.0).card()["rho_anchor"] == 3.0
    assert "rho_anchor" not in TransformConfig(loss="mc").card()
    with pytest.raises(ValueError, match="rho_anchor"):
        TransformConfig(loss="mc", rho=True, rho_anchor=-1.0).validated()


def test_an_mlp_rho_starts_as_the_identity_and_learns(features):
    old, new, labels = features
    x = torch.from_numpy(new)
    config = TransformConfig(loss="mc", rho=True, rho_hidden=16, epochs=5, batch_size=48, lr=1e-2)
    untrained = fit_transform(old, new, labels, replace(config, lr=1e-12, epochs=1), progress=False)[1]
    rho = fit_transform(old, new, labels, config, progress=False)[1]
    assert rho.spec == {"arch": "rho", "d": 12, "hidden": 16} and rho.linear is None
    with torch.no_grad():
        torch.testing.assert_close(untrained(x), x, atol=1e-4, rtol=0)  # the residual's last layer starts at zero
        assert float((rho(x) - x).pow(2).sum(dim=1).mean()) > 1e-3
    assert config.card()["rho_hidden"] == 16 and "rho_hidden" not in TransformConfig(loss="mc").card()
    with pytest.raises(ValueError, match="rho_hidden needs rho"):
        TransformConfig(loss="mc", rho_hidden=16).validated()


def test_fit_transform_is_deterministic(features):
    old, new, labels = features
    config = TransformConfig(loss="mc", epochs=2, batch_size=48, seed=5)
    runs = [fit_transform(old, new, labels, config, progress=False)[0]
            for _ in range(2)]
    for p, q in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_transform_validates(features):
    old, new, labels = features
    with pytest.raises(ValueError, match="same length"):
        fit_transform(old[:10], new, labels, progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        fit_transform(old, new, labels, TransformConfig(loss="l1"), progress=False)
    with pytest.raises(ValueError, match="rho"):
        fit_transform(old, new, labels, TransformConfig(loss="regression", rho=True), progress=False)
    with pytest.raises(ValueError, match="no gradient"):
        fit_transform(old, new, labels, TransformConfig(loss="mc", denominator="new", regression_weight=0),
                      progress=False)
    with pytest.raises(ValueError, match="denominator"):
        fit_transform(old, new, labels, TransformConfig(loss="mc", denominator="both"), progress=False)


def test_class_balanced_batches_hold_p_classes_of_k():
    labels = np.repeat(np.arange(10), [30, 30, 30, 30, 30, 30, 30, 30, 30, 5])
    batches = list(class_balanced_batches(labels, 4, 6, np.random.default_rng(0)))
    for b in batches:
        classes, counts = np.unique(labels[b], return_counts=True)
        assert len(classes) == 4 and set(counts) == {6}
    covered = np.unique(np.concatenate(batches))
    assert len(covered) >= 0.9 * len(labels)


def test_cache_features_pairs_views():
    rng = np.random.default_rng(0)
    data = ImageDataset(rng.integers(0, 255, (6, 28, 28, 1), dtype=np.uint8), np.arange(6) % 2,
                        ["a", "b"], "fashion_mnist", "train")
    torch.manual_seed(0)
    model = SmallCNN(width=4, embedding_dim=8, num_classes=2)
    old, new, labels = cache_features(model, model, data, augmented_copies=1, batch_size=4, progress=False)
    assert old.shape == new.shape == (12, 8) and old.dtype == np.float32
    assert labels.tolist() == data.labels.tolist() * 2
    # Same model, same augmentation draws: the old and new features of each view coincide.
    np.testing.assert_allclose(old, new, atol=1e-6)
    np.testing.assert_allclose(old[:6], embed_images(model, data.images, "fashion_mnist").numpy(), atol=1e-6)
    assert not np.allclose(old[:6], old[6:])


def test_cache_features_of_the_flip_view_embed_the_mirrored_images(tmp_path):
    rng = np.random.default_rng(0)
    data = ImageDataset(rng.integers(0, 255, (6, 28, 28, 1), dtype=np.uint8), np.arange(6) % 2,
                        ["a", "b"], "fashion_mnist", "train")
    torch.manual_seed(0)
    model = SmallCNN(width=4, embedding_dim=8, num_classes=2)
    old, _, labels = cache_features(model, model, data, batch_size=4, progress=False, view="flip")
    mirrored = np.ascontiguousarray(data.images[:, :, ::-1])
    np.testing.assert_allclose(old, embed_images(model, mirrored, "fashion_mnist").numpy(), atol=1e-6)
    assert not np.allclose(old, embed_images(model, data.images, "fashion_mnist").numpy(), atol=1e-3)
    assert labels.tolist() == data.labels.tolist()
    # The cache tells the views apart.
    cache, card = tmp_path / "feats.npz", {"weights_sha256": "aa"}
    clean, _, _ = cached_features(model, card, model, card, data, cache=cache, progress=False)
    flipped, _, _ = cached_features(model, card, model, card, data, cache=cache, progress=False,
                                   view="flip")
    np.testing.assert_allclose(flipped, old, atol=1e-6)
    assert not np.allclose(clean, flipped, atol=1e-3)
    with pytest.raises(ValueError, match="unknown view 'mirror'"):
        TransformConfig(view="mirror").validated()
    # Several views: one block of rows per view, in the order named, and a cache entry of their own.
    both, _, both_labels = cached_features(model, card, model, card, data, cache=cache, progress=False,
                                           view="flip+crop")
    crop = embed_images(model, view_images(data.images, "crop", "fashion_mnist"), "fashion_mnist").numpy()
    np.testing.assert_allclose(both, np.concatenate([old, crop]), atol=1e-6)
    assert both_labels.tolist() == 2 * data.labels.tolist()


def test_cached_features_reuses_only_a_matching_cache(tmp_path):
    rng = np.random.default_rng(0)
    data = ImageDataset(rng.integers(0, 255, (5, 28, 28, 1), dtype=np.uint8), np.arange(5) % 2,
                        ["a", "b"], "fashion_mnist", "train")
    torch.manual_seed(0)
    first, other = SmallCNN(4, 8, 2), SmallCNN(4, 8, 2)
    cards = {"weights_sha256": "aa"}, {"weights_sha256": "bb"}
    cache = tmp_path / "feats.npz"
    old1, _, _ = cached_features(first, cards[0], first, cards[1], data, cache=cache, progress=False)
    # Same recorded weights: the cache answers, even though `other` would embed differently.
    old2, _, _ = cached_features(other, cards[0], other, cards[1], data, cache=cache, progress=False)
    np.testing.assert_array_equal(old1, old2)
    # Other weights: recomputed.
    old3, _, _ = cached_features(other, {"weights_sha256": "cc"}, other, cards[1], data, cache=cache,
                                 progress=False)
    assert not np.allclose(old1, old3)


def test_default_rho_path_follows_the_suite_layout(tmp_path):
    assert default_rho_path(tmp_path / "psi_mc_rho.pt") == tmp_path / "rho_mc.pt"
    assert default_rho_path(tmp_path / "psi_mc_old.pt") == tmp_path / "rho_mc_old.pt"
    assert default_rho_path(tmp_path / "head.pt") == tmp_path / "rho_head.pt"
