"""Training modes on tiny configurations: loss goes down, cards are complete, resume is exact, CLI works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backfill.checkpoints import card_path, load_checkpoint, resume_path
from backfill.cli import main
from backfill.inference import embed_images
from backfill.training import TrainConfig, train_backbone


@pytest.fixture(scope="module")
def learnable_cifar(tmp_path_factory):
    """A fake CIFAR-100 directory, 6 classes told apart by colour and a bright quadrant (learnable)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, (6, 3))
    for split, n in (("train", 240), ("test", 60)):
        labels = np.arange(n) % 6
        images = rng.normal(0, 25, (n, 32, 32, 3)) + colours[labels][:, None, None, :]
        for i, y in enumerate(labels):  # class-specific bright quadrant
            r, c = divmod(int(y) % 4, 2)
            images[i, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 60
        np.savez(root / f"{split}.npz", images=np.clip(images, 0, 255).astype(np.uint8),
                 labels=labels.astype(np.uint8))
    (root / "classes.json").write_text(json.dumps({"classes": [f"class{i}" for i in range(6)]}))
    return root


def _cfg(kind, data, out, **kw):
    base = dict(kind=kind, dataset="cifar100", out=str(out), data=str(data), arch="resnet", depth=8, width=4,
                dim=16, epochs=4, batch_size=32, lr=0.05, seed=0, device="cpu", threads=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _quiet(msg):
    pass


def test_old_new_bct_train_and_loss_goes_down(learnable_cifar, tmp_path):
    old = train_backbone(_cfg("old", learnable_cifar, tmp_path / "old.pt"), log=_quiet)
    assert old.model.num_classes == 3  # default: first half of the 6 classes
    assert old.history[-1]["loss"] < old.history[0]["loss"]
    card = json.loads(card_path(tmp_path / "old.pt").read_text())
    assert card["kind"] == "old" and card["classes"] == [0, 1, 2] and card["dataset"] == "cifar100"
    assert card["epochs"] == 4 and card["seed"] == 0 and card["embedding_dim"] == 16
    assert card["input"]["mean"] == pytest.approx([0.5071, 0.4865, 0.4409])
    assert 0.0 <= card["metrics"]["test_acc"] <= 1.0 and card["metrics"]["train_acc"] > 0
    assert card["training"]["train_images"] == 120
    assert not resume_path(tmp_path / "old.pt").exists()  # removed after a completed run

    new = train_backbone(_cfg("new", learnable_cifar, tmp_path / "new.pt"), log=_quiet)
    assert new.model.num_classes == 6 and new.history[-1]["loss"] < new.history[0]["loss"]

    bct = train_backbone(_cfg("bct", learnable_cifar, tmp_path / "bct.pt", old=str(tmp_path / "old.pt")),
                         log=_quiet)
    h = bct.history
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["influence"] < h[0]["influence"]
    assert bct.card["old_model"]["sha256"] == card["weights_sha256"]
    assert 0.0 <= bct.card["metrics"]["old_classifier_test_acc"] <= 1.0
    # the old model was not touched by BCT training
    reloaded, _ = load_checkpoint(tmp_path / "old.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(reloaded(x)[0], old.model(x)[0])


def test_bct_rejects_an_incompatible_old_model(learnable_cifar, tmp_path):
    train_backbone(_cfg("old", learnable_cifar, tmp_path / "old.pt", epochs=1, dim=8), log=_quiet)
    with pytest.raises(ValueError, match="embedding_dim is 8 but 16"):
        train_backbone(_cfg("bct", learnable_cifar, tmp_path / "bct.pt", old=str(tmp_path / "old.pt")),
                       log=_quiet)
    with pytest.raises(ValueError, match="--old"):
        train_backbone(_cfg("bct", learnable_cifar, tmp_path / "bct.pt"), log=_quiet)


def test_interrupted_run_resumes_to_the_same_weights(learnable_cifar, tmp_path):
    full = train_backbone(_cfg("old", learnable_cifar, tmp_path / "full.pt", epochs=3), log=_quiet)

    def stop_after_epoch_2(msg):
        if "epoch 2/3" in msg:
            raise KeyboardInterrupt

    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        train_backbone(_cfg("old", learnable_cifar, out, epochs=3), log=stop_after_epoch_2)
    assert resume_path(out).exists() and not out.exists()
    with pytest.raises(ValueError, match="different options"):
        train_backbone(_cfg("old", learnable_cifar, out, epochs=3, lr=0.01, resume=True), log=_quiet)
    messages = []
    resumed = train_backbone(_cfg("old", learnable_cifar, out, epochs=3, resume=True), log=messages.append)
    assert any("resuming" in m for m in messages)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_subsample_and_class_count(learnable_cifar, tmp_path):
    res = train_backbone(_cfg("new", learnable_cifar, tmp_path / "n.pt", classes=4, subsample=5, epochs=1,
                              batch_size=8), log=_quiet)
    assert res.card["training"]["train_images"] == 20 and res.card["classes"] == [0, 1, 2, 3]


@pytest.mark.debian_fashion_mnist
def test_cli_trains_fashion_mnist_cnn(tmp_path, capsys):
    out = tmp_path / "old.pt"
    rc = main(["train", "old", "--dataset", "fashion_mnist", "--subsample", "30", "--epochs", "3", "--width",
               "4", "--dim", "8", "--batch-size", "25", "--threads", "1", "--no-progress", "--out", str(out)])
    assert rc == 0 and "test accuracy" in capsys.readouterr().out
    model, card = load_checkpoint(out, expect={"kind": "old", "dataset": "fashion_mnist", "arch": "cnn"})
    assert card["classes"] == [0, 1, 2, 3, 4] and card["command"].startswith("backfill ")
    assert card["training"]["augmentation"] == {"crop_padding": 2, "horizontal_flip": False}
    assert card["history"][-1]["loss"] < card["history"][0]["loss"]
    emb = embed_images(model, np.zeros((3, 28, 28, 1), np.uint8), "fashion_mnist")
    assert emb.shape == (3, 8)


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BACKFILL_CIFAR100", raising=False)
    rc = main(["train", "new", "--dataset", "cifar100", "--data", str(tmp_path),
               "--out", str(tmp_path / "x.pt"), "--no-progress"])
    assert rc == 2 and "CIFAR-100 train split not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --old is required for bct
        main(["train", "bct", "--dataset", "cifar100", "--out", str(tmp_path / "x.pt")])
