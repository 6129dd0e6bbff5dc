"""Tests for backfill.losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backfill.losses import BCTInfluenceLoss, MetricCompatibleLoss, TransformRegressionLoss


def test_bct_influence_matches_hand_cross_entropy():
    torch.manual_seed(0)
    clf = nn.Linear(4, 3)
    emb = torch.randn(5, 4)
    labels = torch.tensor([0, 2, 1, 1, 0])
    loss = BCTInfluenceLoss(clf)(emb, labels)
    expected = 0.0
    for i in range(5):
        logits = [float(clf.weight[c].detach() @ emb[i] + clf.bias[c].detach()) for c in range(3)]
        expected += -logits[int(labels[i])] + math.log(sum(math.exp(v) for v in logits))
    assert loss.item() == pytest.approx(expected / 5, rel=1e-5)


def test_bct_influence_classifier_frozen_gradient_reaches_embeddings():
    torch.manual_seed(0)
    clf = nn.Linear(4, 3)
    before = clf.weight.detach().clone()
    loss_fn = BCTInfluenceLoss(clf)
    assert all(not p.requires_grad for p in loss_fn.parameters())
    emb = torch.randn(6, 4, requires_grad=True)
    loss_fn(emb, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert loss_fn.old_classifier.weight.grad is None
    assert torch.equal(clf.weight, before)
    assert clf.weight.requires_grad  # the caller's module is not modified


def test_bct_influence_validates_inputs():
    loss_fn = BCTInfluenceLoss(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="shape"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="nn.Linear"):
        BCTInfluenceLoss(nn.Conv2d(1, 1, 1))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _dot(u: torch.Tensor, v: torch.Tensor) -> float:
    return sum(float(p) * float(q) for p, q in zip(u, v, strict=True))


def _hand_mc(a, b, n, o, labels, tau, variant, k=None):
    """L_MC written with plain loops, straight from method.md (independent of the vectorised code)."""
    a, b, n, o = (_unit(t.detach()) for t in (a, b, n, o))
    m = len(labels)
    losses = []
    for i in range(m):
        neg_new = [_dot(a[i], n[j]) / tau for j in range(m) if labels[j] != labels[i]]
        neg_old = [_dot(b[i], o[j]) / tau for j in range(m) if labels[j] != labels[i]]

        def hardest(values):
            return values if k is None else sorted(values, reverse=True)[:k]

        pos_new = [_dot(a[i], n[j]) / tau for j in range(m) if labels[j] == labels[i] and j != i]
        pos_old = [_dot(b[i], o[j]) / tau for j in range(m) if labels[j] == labels[i]]
        if variant == "joint":
            pairs = [(s, hardest(neg_new + neg_old)) for s in pos_new + pos_old]
        elif variant == "old":
            pairs = [(s, hardest(neg_old)) for s in pos_old]
        elif variant == "new":
            pairs = [(s, hardest(neg_new)) for s in pos_new]
        else:  # separate
            pairs = [(s, hardest(neg_new)) for s in pos_new] + [(s, hardest(neg_old)) for s in pos_old]
        for s, negs in pairs:
            denominator = math.exp(s) + sum(math.exp(v) for v in negs)
            losses.append(-math.log(math.exp(s) / denominator))
    return sum(losses) / len(losses)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    a = _unit(torch.randn(6, 5, generator=gen))
    b = _unit(torch.randn(6, 4, generator=gen))
    o = _unit(torch.randn(6, 4, generator=gen))
    return a, b, a, o, labels


@pytest.mark.parametrize("variant", ["joint", "old", "new", "separate"])
@pytest.mark.parametrize("k", [None, 2])
def test_mc_loss_matches_hand_computation(batch, variant, k):
    a, b, n, o, labels = batch
    loss = MetricCompatibleLoss(temperature=0.5, hard_negatives=k, denominator=variant)(a, b, n, o, labels)
    assert loss.item() == pytest.approx(_hand_mc(a, b, n, o, labels, 0.5, variant, k), rel=1e-5)


def test_mc_variants_differ_and_hard_negatives_matter(batch):
    variants = ["joint", "old", "new", "separate"]
    values = {v: MetricCompatibleLoss(0.5, denominator=v)(*batch).item() for v in variants}
    assert len({round(v, 6) for v in values.values()}) == 4
    # The pooled denominator holds more negatives than each space's own: joint > separate.
    assert values["joint"] > values["separate"]
    # Keeping fewer negatives can only shrink the denominators.
    assert MetricCompatibleLoss(0.5, hard_negatives=1)(*batch).item() < values["joint"]
    # k larger than the number of negatives is the same as keeping all of them.
    assert MetricCompatibleLoss(0.5, hard_negatives=100)(*batch).item() == pytest.approx(values["joint"])


def test_mc_loss_is_stable_at_low_temperature(batch):
    # exp(1 / 1e-4) overflows float64: only a log-sum-exp formulation stays finite.
    assert torch.isfinite(MetricCompatibleLoss(temperature=1e-4)(*batch))
    loss = MetricCompatibleLoss(temperature=0.01)(*batch)
    assert loss.item() == pytest.approx(_hand_mc(*batch, 0.01, "joint"), rel=1e-4)


def test_mc_loss_gradient_reaches_only_trainable_parts():
    torch.manual_seed(0)
    psi, rho = nn.Linear(5, 4), nn.Linear(5, 5)
    new_backbone = nn.Linear(3, 5).requires_grad_(False)
    x = torch.randn(8, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    o = _unit(torch.randn(8, 4)).requires_grad_(True)  # a would-be trainable old gallery: must stay untouched
    feats = new_backbone(x)
    a = rho(feats)
    loss = MetricCompatibleLoss(0.1)(a, psi(a), a, o, labels)
    loss.backward()
    assert psi.weight.grad is not None and psi.weight.grad.abs().sum() > 0
    assert rho.weight.grad is not None and rho.weight.grad.abs().sum() > 0
    assert new_backbone.weight.grad is None
    assert o.grad is None


def test_mc_new_variant_gives_psi_no_gradient(batch):
    a, _, _, o, labels = batch
    a = a.clone().requires_grad_(True)
    psi = nn.Linear(5, 4)
    MetricCompatibleLoss(0.5, denominator="new")(a, psi(a), a, o, labels).backward()
    assert a.grad is not None
    assert psi.weight.grad is None


def test_mc_loss_rewards_compatible_embeddings():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(4)[:3]
    aligned = centres[labels]
    noisy = _unit(aligned + 0.3 * torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    loss_fn = MetricCompatibleLoss(0.1)
    good = loss_fn(aligned, aligned, aligned, aligned, labels)
    shuffled = loss_fn(aligned, aligned[torch.tensor([2, 3, 4, 5, 0, 1])], aligned, noisy, labels)
    assert good < shuffled


def test_mc_loss_validates_inputs(batch):
    a, b, n, o, labels = batch
    with pytest.raises(ValueError, match="temperature"):
        MetricCompatibleLoss(0.0)
    with pytest.raises(ValueError, match="hard_negatives"):
        MetricCompatibleLoss(0.1, hard_negatives=0)
    with pytest.raises(ValueError, match="denominator"):
        MetricCompatibleLoss(0.1, denominator="both")
    with pytest.raises(ValueError, match="same shape"):
        MetricCompatibleLoss(0.1)(a, b, n[:3], o, labels)
    with pytest.raises(ValueError, match="labels"):
        MetricCompatibleLoss(0.1)(a, b, n, o, labels[:3])


def test_regression_loss_is_mean_squared_distance_of_normalised_prediction():
    pred = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # row 0: (0.6, 0.8) - (1, 0) -> 0.16 + 0.64 = 0.8; row 1: exact -> 0
    assert TransformRegressionLoss()(pred, old).item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="same shape"):
        TransformRegressionLoss()(pred, old[:, :1])
