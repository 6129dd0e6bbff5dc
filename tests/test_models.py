"""Backbones, psi, rho, the BCT classifier extension and the spec factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backfill.models import (
    CifarResNet,
    EmbeddingHead,
    ReverseTransform,
    SmallCNN,
    build_model,
    count_parameters,
    extend_classifier,
)


def _unit_norm(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-5)


@pytest.mark.parametrize("depth, n_blocks", [(8, 3), (14, 6), (20, 9)])
def test_resnet_depth_and_outputs(depth, n_blocks):
    model = CifarResNet(depth=depth, width=4, embedding_dim=16, num_classes=7)
    assert len(model.blocks) == n_blocks
    emb, logits = model(torch.randn(3, 3, 32, 32))
    assert emb.shape == (3, 16) and logits.shape == (3, 7) and _unit_norm(emb)
    model.eval()
    assert torch.allclose(model.embed(torch.ones(2, 3, 32, 32)), model(torch.ones(2, 3, 32, 32))[0])


def test_resnet_width_scales_capacity():
    assert count_parameters(CifarResNet(8, 32)) > 3 * count_parameters(CifarResNet(8, 16))


def test_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=10)
    with pytest.raises(ValueError, match="width"):
        CifarResNet(width=0)


def test_small_cnn_outputs():
    model = SmallCNN(width=4, embedding_dim=8, num_classes=10)
    emb, logits = model(torch.randn(5, 1, 28, 28))
    assert emb.shape == (5, 8) and logits.shape == (5, 10) and _unit_norm(emb)
    assert model.embedding_dim == 8 and model.num_classes == 10


@pytest.mark.parametrize("model", [CifarResNet(8, 4, 16, 5, logit_scale=10.0), SmallCNN(4, 8, 3)])
def test_cosine_logits_and_equivalent_linear_layer(model):
    model.eval()
    x = torch.randn(4, model.spec["in_channels"], 32 if model.spec["arch"] == "resnet" else 28,
                    32 if model.spec["arch"] == "resnet" else 28)
    emb, logits = model(x)
    s = model.spec["logit_scale"]
    assert logits.abs().max() <= s + 1e-4  # cosine logits are bounded by the scale
    layer = model.logit_layer()
    assert isinstance(layer, nn.Linear) and layer.bias is None and not layer.weight.requires_grad
    assert torch.allclose(layer(emb), logits, atol=1e-5)
    assert torch.allclose(layer.weight.norm(dim=1), torch.full((layer.out_features,), s))
    with pytest.raises(ValueError, match="logit_scale"):
        CifarResNet(logit_scale=0.0)


def test_reverse_transform_is_normalised():
    psi = ReverseTransform(d_in=12, d_out=6, hidden=20)
    out = psi(torch.randn(4, 12))
    assert out.shape == (4, 6) and _unit_norm(out)
    assert psi.spec == {"arch": "psi", "d_in": 12, "d_out": 6, "hidden": 20}
    assert isinstance(psi.net[1], nn.BatchNorm1d)


@pytest.mark.parametrize("hidden", [None, 32])
def test_embedding_head_starts_as_identity(hidden):
    x = torch.nn.functional.normalize(torch.randn(6, 10), dim=1)
    rho = EmbeddingHead(10, hidden=hidden)
    assert torch.allclose(rho(x), x, atol=1e-6)
    # and it is trainable: one step moves it away from the identity
    opt = torch.optim.SGD(rho.parameters(), lr=0.5)
    (rho(x)[:, 0]).sum().neg().backward()
    opt.step()
    assert not torch.allclose(rho(x), x, atol=1e-4)


def test_extend_classifier_hand_checked():
    old = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        old.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))  # trained rows, norm 2
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [0.0, -1.0]])
    labels = torch.tensor([0, 1, 2, 2, 3])
    ext = extend_classifier(old, emb, labels, num_classes=5)
    assert ext.weight.shape == (5, 2) and not ext.weight.requires_grad
    assert torch.equal(ext.weight[:2], old.weight)  # seen classes copied
    # class 2: mean (0.7, 0.7) -> unit (0.7071, 0.7071), scaled to the trained rows' mean norm 2
    assert torch.allclose(ext.weight[2], torch.tensor([2 ** 0.5, 2 ** 0.5]), atol=1e-5)
    assert torch.allclose(ext.weight[3], torch.tensor([0.0, -2.0]))
    assert torch.equal(ext.weight[4], torch.zeros(2))  # no sample -> zero row
    assert torch.equal(old.weight, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))  # input untouched


def test_extend_classifier_with_bias_and_validation():
    old = nn.Linear(3, 2)
    with torch.no_grad():
        old.bias.copy_(torch.tensor([1.0, 3.0]))
    ext = extend_classifier(old, torch.eye(3)[:1], torch.tensor([2]), 3)
    assert torch.allclose(ext.bias, torch.tensor([1.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match="smaller"):
        extend_classifier(old, torch.eye(3), torch.tensor([0, 1, 1]), 1)
    with pytest.raises(ValueError, match="shape"):
        extend_classifier(old, torch.eye(4), torch.tensor([0, 1, 1, 1]), 3)
    with pytest.raises(ValueError, match="lie in"):
        extend_classifier(old, torch.eye(3), torch.tensor([0, 1, 5]), 3)


@pytest.mark.parametrize("model", [CifarResNet(8, 4, 16, 5), SmallCNN(4, 8, 3), ReverseTransform(8, 4),
                                   EmbeddingHead(8), EmbeddingHead(8, 16)])
def test_build_model_round_trips_spec(model):
    rebuilt = build_model(model.spec)
    assert type(rebuilt) is type(model) and rebuilt.spec == model.spec
    rebuilt.load_state_dict(model.state_dict())  # same parameter names and shapes


def test_spec_without_logit_scale_rebuilds_a_plain_linear_head():
    spec = {k: v for k, v in SmallCNN(4, 8, 3).spec.items() if k != "logit_scale"}
    model = build_model(spec).eval()
    emb = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    assert model.logit_scale is None and torch.allclose(model.logits(emb), model.classifier(emb))


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model arch"):
        build_model({"arch": "vit"})
    with pytest.raises(ValueError, match="invalid arguments"):
        build_model({"arch": "psi", "d_in": 3, "colour": "red"})
    with pytest.raises(ValueError, match="'arch'"):
        build_model({"depth": 8})
