"""Losses of MAXL: focal loss with soft targets, and the entropy regulariser of the generator."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for the softmax; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def focal_terms(logits: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-entry focal terms -(1 - p_k)^gamma log p_k, [B, K]; the loss is linear in the target through them."""
    logp = torch.log_softmax(upcast(logits), dim=1)
    return -((1 - logp.exp()).pow(gamma) if gamma else 1.0) * logp


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k (1 - p_k)^gamma log p_k.

    `target` is a distribution per row ([B, K]) or hard class indices ([B]). gamma=0 is
    cross-entropy. log p comes from log_softmax, so zero targets never meet log(0).
    """
    terms = focal_terms(logits, gamma)
    if target.dim() == 1:
        return terms.gather(1, target[:, None]).mean()
    return (target * terms).sum(dim=1).mean()


def entropy_regulariser(labels: torch.Tensor) -> torch.Tensor:
    """H = sum_k ybar_k log ybar_k, the *negative* entropy of the batch-mean label.

    Minimising it spreads the generator's usage over all K auxiliary classes. An auxiliary
    class unused in the batch (ybar_k = 0) contributes 0 with a finite gradient: xlogy's
    gradient there is -inf, which times the mask softmax's exact zeros would give NaN.
    """
    ybar = upcast(labels).mean(dim=0)
    return (ybar * torch.log(ybar.clamp_min(1e-30))).sum()


def block_entropy(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of soft labels; zeros outside the block contribute nothing."""
    return -torch.special.xlogy(labels, labels).sum(dim=1)


def block_usage_regulariser(labels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The usage term per primary-class block: mean over the primary classes in the batch of
    sum_k ybar_ck log ybar_ck, ybar_c the mean label of the batch's samples of class c.

    The mask already confines each sample's label to its block, so the batch-mean form above
    mostly measures how often each primary class occurs; this form asks only that each block's
    own auxiliary classes be used evenly. Like entropy_regulariser, it is a negative entropy.
    """
    labels = upcast(labels)
    # class means through a [B, B] same-class matrix rather than torch.unique, which would make
    # the device wait for the host on every meta step; B is a batch, so B x B is small
    same = (y[:, None] == y[None, :]).to(labels.dtype)
    n = same.sum(dim=1)                                   # samples of each sample's class
    ybar = same @ labels / n[:, None]                     # each sample's class-mean label
    h = (ybar * torch.log(ybar.clamp_min(1e-30))).sum(dim=1)
    return (h / n).sum() / (1 / n).sum()                  # each class once: a mean over the classes


def sample_entropy(labels: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy of soft labels (nats); minimising it sharpens each label.

    With a usage term, (usage entropy - per-sample entropy) is the mutual information between
    input and auxiliary class inside each block: labels that say something about the sample.
    """
    labels = upcast(labels)
    return -(labels * torch.log(labels.clamp_min(1e-30))).sum(dim=1).mean()


def pair_cross_entropy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of two soft labels of the same samples, batch mean (nats).

    Smallest when both are the same one-hot label: the two views of an image agree, confidently.
    """
    a, b = upcast(a), upcast(b)
    la, lb = torch.log(a.clamp_min(1e-30)), torch.log(b.clamp_min(1e-30))
    return -0.5 * ((a * lb).sum(dim=1) + (b * la).sum(dim=1)).mean()


def pair_mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """I(z; z') of the auxiliary classes of two views of the same samples (nats), IIC's objective.

    The joint P = mean_b a_b b_b^T is symmetrised; I = sum P log(P / (P_i P_j)). Labels are masked
    to their sample's primary block, so P is block-diagonal and I is H(primary class) (fixed by
    the data) plus the class-weighted mean of the mutual information inside each block: raising I
    asks each block's labels to be used evenly, be confident, and agree across the two views.
    """
    a, b = upcast(a), upcast(b)
    p = a.T @ b / len(a)
    p = ((p + p.T) / 2).clamp_min(1e-30)
    pi, pj = p.sum(dim=1, keepdim=True), p.sum(dim=0, keepdim=True)
    return (p * (torch.log(p) - torch.log(pi) - torch.log(pj))).sum()
