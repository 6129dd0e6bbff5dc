"""Losses for compatible training (pytorch-metric-learning style: one small class per loss).

- :class:`BCTInfluenceLoss`: the backward-compatible training influence loss (Shen et al., 2020).
- :class:`TransformRegressionLoss`: L2 regression of psi(phi_n) onto phi_o.
- :class:`MetricCompatibleLoss`: the metric-compatible contrastive loss of method.md, with its ablations.
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


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must be 2-D with the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


class TransformRegressionLoss(nn.Module):
    """L2 regression of the reverse transformation onto the old embedding space.

    ::

        L_reg = mean_i || normalise(psi(phi_n(x_i))) - phi_o(x_i) ||^2

    (method.md, "Reverse transformation"). For unit vectors this equals ``mean_i 2 - 2 cos``. Only the
    prediction is normalised: the target ``phi_o(x_i)`` is a frozen, already L2-normalised old embedding.
    """

    def forward(self, transformed: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss.

        Parameters
        ----------
        transformed : Tensor, float, shape (n, d_old)
            ``psi(phi_n(x))`` (normalised here, so raw MLP outputs are fine).
        old : Tensor, float, shape (n, d_old)
            ``phi_o(x)``, the frozen targets (treated as constants: detached).
        """
        _check_pair("transformed", transformed, "old", old)
        diff = F.normalize(transformed, dim=1) - old.detach()
        return diff.pow(2).sum(dim=1).mean()


MC_DENOMINATORS = ("joint", "old", "new", "separate")


class MetricCompatibleLoss(nn.Module):
    """Metric-compatible contrastive loss L_MC (Seo et al., 2023; method.md, "Metric-compatible ...").

    In-batch: the batch is both the query set and the gallery. With anchor ``i``, labels ``y``, temperature
    ``tau``, and all vectors L2-normalised (done here)::

        a_i = phi^_n(x_i)   b_i = psi(phi^_n(x_i))   n_j = phi^_n(x_j)   o_j = phi_o(x_j)  (frozen)
        s^N_ij = a_i . n_j / tau                     s^O_ij = b_i . o_j / tau
        Neg(i) = { s^N_ik, s^O_ik : y_k != y_i }     (optionally only the k largest: ``hard_negatives``)
        Pos(i) = { (N, j) : y_j = y_i, j != i }  u  { (O, j) : y_j = y_i }     (j = i allowed in O only)
        l(i, s, j) = -log( exp(s^s_ij) / (exp(s^s_ij) + sum_{v in Neg(i)} exp(v)) )
                   = softplus( logsumexp(Neg(i)) - s^s_ij )
        L_MC = mean of l over all (anchor, positive) pairs

    The single pooled denominator (negatives of both spaces) calibrates the two spaces against each other:
    a positive in either space must outscore every negative in either space, which is what a merged
    ranking of old-space and new-space scores needs. With the class-balanced batches used for training every
    anchor has the same number of positives, so the pair mean equals the mean over anchors of the per-anchor
    mean. Anchors without any positive (possible only for ``denominator="new"``) contribute nothing; a batch with
    no pair at all returns 0 (connected to the graph).

    Denominators (the ablations of the paper):

    - ``"joint"``: the loss above.
    - ``"old"``: old space only: positives ``(O, j)``, negatives ``s^O_ik``.
    - ``"new"``: new space only: positives ``(N, j), j != i``, negatives ``s^N_ik`` (trains rho only; psi
      gets no gradient from it).
    - ``"separate"``: both spaces, each positive against the negatives of its own space only
      (``L_old`` and ``L_new`` pooled over all their pairs, without the shared denominator).

    Parameters
    ----------
    temperature : float > 0
        ``tau`` (no default here: the measured training default is
        ``backfill.transform_training.DEFAULT_TEMPERATURE``).
    hard_negatives : int > 0 or None
        Keep only the ``k`` largest negative logits per anchor (per space for ``"separate"``, pooled over
        both spaces for ``"joint"``); ``None`` keeps all.
    denominator : one of ``"joint"``, ``"old"``, ``"new"``, ``"separate"``.
    """

    def __init__(self, temperature: float, hard_negatives: int | None = None,
                 denominator: str = "joint") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if hard_negatives is not None and (
            isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int) or hard_negatives <= 0
        ):
            raise ValueError(f"hard_negatives must be a positive integer or None, got {hard_negatives!r}")
        if denominator not in MC_DENOMINATORS:
            raise ValueError(f"unknown denominator {denominator!r}; expected one of {MC_DENOMINATORS}")
        self.temperature = float(temperature)
        self.hard_negatives = hard_negatives
        self.denominator = denominator

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, hard_negatives={self.hard_negatives}, "
                f"denominator={self.denominator!r}")

    def _negative_lse(self, *logits: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Per-anchor logsumexp over the negatives of the given spaces (pooled), ``(m,)``."""
        masked = torch.cat([s.masked_fill(~negative, float("-inf")) for s in logits], dim=1)
        if self.hard_negatives is not None and self.hard_negatives < masked.shape[1]:
            # Entries beyond an anchor's real negatives stay -inf and add exp(-inf) = 0.
            masked = masked.topk(self.hard_negatives, dim=1).values
        return torch.logsumexp(masked, dim=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, n: torch.Tensor, o: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar L_MC of the batch.

        Parameters
        ----------
        a : Tensor (m, d_new)  query-side new embeddings ``phi^_n(x_i)``.
        b : Tensor (m, d_old)  query-side transformed embeddings ``psi(phi^_n(x_i))``.
        n : Tensor (m, d_new)  gallery-side new embeddings ``phi^_n(x_j)`` (usually the same tensor as ``a``).
        o : Tensor (m, d_old)  gallery-side old embeddings ``phi_o(x_j)``; detached (frozen).
        labels : Tensor int (m,)  class ids of the batch.
        """
        _check_pair("a", a, "n", n)
        _check_pair("b", b, "o", o)
        if a.shape[0] != b.shape[0] or labels.shape != (a.shape[0],):
            raise ValueError(
                f"a, b and labels must describe the same {a.shape[0]} items, got b {tuple(b.shape)} "
                f"and labels {tuple(labels.shape)}"
            )
        tau = self.temperature
        same = labels[:, None] == labels[None, :]
        negative = ~same
        pos_old = same
        pos_new = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        terms = []  # (logits, positive mask, per-anchor negative logsumexp)
        if self.denominator in ("joint", "separate", "new"):
            s_new = F.normalize(a, dim=1) @ F.normalize(n, dim=1).T / tau
        if self.denominator in ("joint", "separate", "old"):
            s_old = F.normalize(b, dim=1) @ F.normalize(o.detach(), dim=1).T / tau
        if self.denominator == "joint":
            lse = self._negative_lse(s_new, s_old, negative=negative)
            terms = [(s_new, pos_new, lse), (s_old, pos_old, lse)]
        if self.denominator in ("separate", "new"):
            terms.append((s_new, pos_new, self._negative_lse(s_new, negative=negative)))
        if self.denominator in ("separate", "old"):
            terms.append((s_old, pos_old, self._negative_lse(s_old, negative=negative)))
        total = sum((F.softplus(lse[:, None] - s)[pos].sum() for s, pos, lse in terms), a.new_zeros(()))
        count = sum(int(pos.sum()) for _, pos, _ in terms)
        return total / max(count, 1)
