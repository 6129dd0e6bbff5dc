"""Losses for compatible training (pytorch-metric-learning style: one small class per loss).

- :class:`BCTInfluenceLoss`: the backward-compatible training influence loss (Shen et al., 2020).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class BCTInfluenceLoss(nn.Module):
    """Influence loss of Backward-Compatible Training (BCT).

    Shen, Xiong, Xia, Soatto, "Towards Backward-Compatible Representation Learning", CVPR 2020.

    The new model's embedding is scored by the **frozen** old classifier ``W_o, b_o``::

        L_influence = mean_i  CE( W_o . phi_n(x_i) + b_o ,  y_i )
                    = mean_i -log softmax(W_o . phi_n(x_i) + b_o)[y_i]

    so that gradients push ``phi_n`` into the region of the old embedding space where the old classifier
    already recognises class ``y_i``: new embeddings become directly comparable with old ones. For classes the
    old model never saw, pass an old classifier extended with class means of old embeddings (BCT's recipe;
    ``backfill.models.extend_classifier``).

    The classifier is deep-copied, put in eval mode and frozen (``requires_grad=False``), so it is never
    updated and never belongs in the optimiser; the caller's module is left untouched.

    Parameters
    ----------
    old_classifier : nn.Linear
        The old model's classifier, ``in_features`` = old embedding dim, ``out_features`` >= number of classes
        the labels refer to.
    """

    def __init__(self, old_classifier: nn.Linear) -> None:
        super().__init__()
        if not isinstance(old_classifier, nn.Linear):
            raise ValueError(f"old_classifier must be an nn.Linear, got {type(old_classifier).__name__}")
        self.old_classifier = copy.deepcopy(old_classifier).eval()
        for param in self.old_classifier.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> BCTInfluenceLoss:
        # The frozen classifier stays in eval mode whatever the caller does (it is a plain Linear today,
        # but this keeps the guarantee if it ever carries dropout or normalisation).
        super().train(mode)
        self.old_classifier.eval()
        return self

    def forward(self, new_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar influence loss.

        Parameters
        ----------
        new_embeddings : Tensor, float, shape (n, d_old)
            New-model embeddings (same dim as the old embedding space).
        labels : Tensor, int64, shape (n,)
            Class ids in ``[0, old_classifier.out_features)``.
        """
        if new_embeddings.ndim != 2 or new_embeddings.shape[1] != self.old_classifier.in_features:
            raise ValueError(
                f"new_embeddings must have shape (n, {self.old_classifier.in_features}) to match the old "
                f"classifier, got {tuple(new_embeddings.shape)}"
            )
        if labels.shape != (new_embeddings.shape[0],):
            raise ValueError(
                f"labels must have shape ({new_embeddings.shape[0]},), got {tuple(labels.shape)}"
            )
        if labels.numel() and int(labels.max()) >= self.old_classifier.out_features:
            raise ValueError(
                f"label {int(labels.max())} is outside the old classifier's "
                f"{self.old_classifier.out_features} classes: extend the classifier to the new classes first "
                "(models.extend_classifier)"
            )
        logits = self.old_classifier(new_embeddings)
        return F.cross_entropy(logits, labels)
