"""Checkpoint round trip, card contents and every mismatch error."""

from __future__ import annotations

import json

import pytest
import torch

from backfill.checkpoints import (
    CheckpointError,
    card_path,
    load_checkpoint,
    load_resume,
    read_card,
    resume_path,
    save_checkpoint,
    save_resume,
)
from backfill.models import CifarResNet, ReverseTransform


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = CifarResNet(8, 4, embedding_dim=16, num_classes=5).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, {"kind": "old", "dataset": "cifar100", "classes": [0, 1, 2, 3, 4],
                                  "metrics": {"test_acc": 0.5}})
    return path, model


def test_round_trip_gives_identical_outputs(saved):
    path, model = saved
    loaded, card = load_checkpoint(path, expect={"kind": "old", "dataset": "cifar100", "embedding_dim": 16})
    x = torch.randn(2, 3, 32, 32)
    assert not loaded.training
    assert torch.equal(loaded(x)[0], model(x)[0])
    assert card["model"] == model.spec and card["embedding_dim"] == 16
    for key in ("versions", "command", "created", "weights_sha256", "metrics", "classes"):
        assert key in card
    assert card["versions"]["torch"] == torch.__version__
    assert json.loads(card_path(path).read_text()) == card


def test_expect_accepts_spec_keys_and_alternatives(saved):
    path, _ = saved
    load_checkpoint(path, expect={"arch": "resnet", "num_classes": 5, "kind": ("old", "new")})


@pytest.mark.parametrize("expect, message", [
    ({"embedding_dim": 128}, "embedding_dim is 16 but 128 was expected"),
    ({"dataset": "fashion_mnist"}, "dataset is 'cifar100' but 'fashion_mnist'"),
    ({"kind": "bct"}, "kind is 'old'"),
    ({"kind": ("new", "bct")}, "kind is 'old'"),
    ({"colour": "red"}, "has no 'colour'"),
])
def test_mismatch_is_named(saved, expect, message):
    path, _ = saved
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, expect=expect)


def test_truncated_weights_file(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_truncated_file_without_checksum_still_fails_clearly(saved):
    path, _ = saved
    card = json.loads(card_path(path).read_text())
    del card["weights_sha256"]
    card_path(path).write_text(json.dumps(card))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_missing_card_and_missing_weights(saved, tmp_path):
    path, _ = saved
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    card_path(path).unlink()
    with pytest.raises(CheckpointError, match="card .* is missing"):
        load_checkpoint(path)


def test_corrupt_card(saved):
    path, _ = saved
    card_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(path)
    card_path(path).write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a backfill checkpoint card"):
        read_card(path)


def test_state_dict_shape_mismatch(saved):
    path, _ = saved
    card = json.loads(card_path(path).read_text())
    card["model"]["embedding_dim"] = 32  # card lies about the architecture
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_checkpoint(path)


def test_save_needs_spec_and_kind(tmp_path):
    with pytest.raises(CheckpointError, match="spec"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2), {"kind": "psi"})
    with pytest.raises(CheckpointError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", ReverseTransform(4, 4), {})


def test_psi_checkpoint_dims(tmp_path):
    save_checkpoint(tmp_path / "psi.pt", ReverseTransform(8, 4), {"kind": "psi", "dataset": "cifar100"})
    _, card = load_checkpoint(tmp_path / "psi.pt", expect={"d_in": 8, "embedding_dim": 4})
    with pytest.raises(CheckpointError, match="d_in is 8"):
        load_checkpoint(tmp_path / "psi.pt", expect={"d_in": 128})


def test_resume_state_round_trip(tmp_path):
    path = tmp_path / "old.pt"
    assert load_resume(path) is None
    save_resume(path, {"epoch": 3, "x": torch.arange(3)})
    assert resume_path(path).name == "old.resume.pt"
    state = load_resume(path)
    assert state["epoch"] == 3 and torch.equal(state["x"], torch.arange(3))
    resume_path(path).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="delete it"):
        load_resume(path)
