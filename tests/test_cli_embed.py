"""End to end: `backfill train transform` and `backfill embed` on a tiny Fashion-MNIST-shaped dataset."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from backfill.checkpoints import save_checkpoint
from backfill.cli import main
from backfill.datasets import FASHION_MNIST_CLASSES
from backfill.embeddings import Embeddings
from backfill.models import SmallCNN
from backfill.suite import ModelSuite, inputs_path


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """IDX files of 60 train / 20 test random 28x28 images, 10 classes."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, data_dir):
    """old/new saved with save_checkpoint, psi_regression / psi_mc / psi_mc_rho + rho_mc via the CLI."""
    directory = tmp_path_factory.mktemp("suite")
    torch.manual_seed(0)
    base = {"dataset": "fashion_mnist", "class_names": FASHION_MNIST_CLASSES}
    save_checkpoint(directory / "old.pt", SmallCNN(4, 8, 5),
                    {**base, "kind": "old", "classes": list(range(5))})
    save_checkpoint(directory / "new.pt", SmallCNN(4, 12, 10),
                    {**base, "kind": "new", "classes": list(range(10))})
    common = ["train", "transform", "--old", str(directory / "old.pt"), "--new", str(directory / "new.pt"),
              "--dataset", "fashion_mnist", "--data", str(data_dir), "--epochs", "2", "--batch-size", "20",
              "--device", "cpu", "--no-progress", "--feature-cache", str(directory / "feats.npz")]
    assert main(common + ["--loss", "regression", "--out", str(directory / "psi_regression.pt")]) == 0
    assert main(common + ["--loss", "mc", "--temperature", "0.1", "--hard-negatives", "5",
                          "--out", str(directory / "psi_mc.pt")]) == 0
    assert main(common + ["--loss", "mc", "--rho", "--hidden", "20", "--regression-weight", "0",
                          "--out", str(directory / "psi_mc_rho.pt")]) == 0
    return directory


def test_train_transform_writes_cards_with_provenance(suite_dir):
    old = json.loads((suite_dir / "old.json").read_text())
    psi = json.loads((suite_dir / "psi_mc.json").read_text())
    assert psi["kind"] == "psi" and psi["dataset"] == "fashion_mnist"
    assert psi["old_model"]["sha256"] == old["weights_sha256"] and psi["old_model"]["name"] == "old.pt"
    assert psi["training"]["loss"] == "mc" and psi["training"]["temperature"] == 0.1
    assert psi["training"]["hard_negatives"] == 5 and psi["training"]["train_features"] == 60
    assert len(psi["history"]) == 2 and psi["command"].startswith("backfill ")
    rho = json.loads((suite_dir / "rho_mc.json").read_text())
    psi_rho = json.loads((suite_dir / "psi_mc_rho.json").read_text())
    assert psi_rho["rho_model"]["sha256"] == rho["weights_sha256"]
    assert psi_rho["training"]["hidden"] == 20 and psi_rho["training"]["regression_weight"] == 0
    assert psi_rho["model"]["hidden"] == 20 and psi["model"]["hidden"] == 2 * 12  # the default: 2 x max(d_o, d_n)
    # The three runs share one feature cache; the suite they form loads and validates.
    assert (suite_dir / "feats.npz").is_file()
    assert ModelSuite.load(suite_dir).variants == ["base", "full", "full_rho"]


def test_train_transform_rejects_rho_with_regression(suite_dir, data_dir, capsys):
    code = main(["train", "transform", "--old", str(suite_dir / "old.pt"), "--new", str(suite_dir / "new.pt"),
                 "--dataset", "fashion_mnist", "--data", str(data_dir), "--loss", "regression", "--rho",
                 "--out", str(suite_dir / "x.pt")])
    assert code == 2 and "--rho needs --loss mc" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["base", "full", "full_rho"])
def test_embed_writes_the_evaluate_format_and_caches(suite_dir, data_dir, tmp_path, capsys, variant):
    out = tmp_path / "emb.npz"
    args = ["embed", "--suite", str(suite_dir), "--dataset", "fashion_mnist", "--data", str(data_dir),
            "--variant", variant, "--batch-size", "7", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert "written" in capsys.readouterr().out
    emb = Embeddings.load(out)
    expected = ModelSuite.load(suite_dir).embed(_test_images(data_dir), np.arange(20) % 10)[variant]
    np.testing.assert_array_equal(emb.labels, np.arange(20) % 10)
    assert emb.available == expected.available
    np.testing.assert_allclose(emb.transformed, expected.transformed, atol=1e-5)
    np.testing.assert_allclose(emb.new, expected.new, atol=1e-5)
    with np.load(out) as z:
        assert set(z.files) == {"labels", *expected.available}

    mtime = out.stat().st_mtime_ns
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out and out.stat().st_mtime_ns == mtime
    assert main(args + ["--force"]) == 0
    assert "written" in capsys.readouterr().out


def _test_images(data_dir):
    from backfill.datasets import load_dataset

    return load_dataset("fashion_mnist", "test", data_dir).images


def test_embed_recomputes_when_inputs_change(suite_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    args = ["embed", "--suite", str(suite_dir), "--dataset", "fashion_mnist", "--data", str(data_dir),
            "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    record = json.loads(inputs_path(out).read_text())
    assert set(record["suite"]) >= {"old.pt", "new.pt", "psi_regression.pt"}
    record["suite"]["new.pt"] = "0" * 64  # as if new.pt had been retrained since
    inputs_path(out).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(args) == 0
    assert "written" in capsys.readouterr().out


def test_embed_errors(suite_dir, data_dir, tmp_path, capsys):
    out = str(tmp_path / "e.npz")
    assert main(["embed", "--suite", str(suite_dir), "--dataset", "cifar100", "--data", str(data_dir),
                 "--out", out]) == 2
    assert main(["embed", "--suite", str(tmp_path / "missing"), "--dataset", "fashion_mnist",
                 "--data", str(data_dir), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "not found" in err
