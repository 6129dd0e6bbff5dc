"""Tests for backfill.losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backfill.losses import BCTInfluenceLoss


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
