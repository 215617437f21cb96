"""MAXL, Algorithm 1 of Liu, Davison & Johns (2019): one iteration is a training step on the
multi-task network (theta1) and a meta step on the label generator (theta2).

Everything here is plain functions over modules and tensors: no device, rank or dtype
decisions are made here, so the trainer can wrap them (autocast, DDP, compile) freely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from auxgen.losses import (
    block_usage_regulariser,
    entropy_regulariser,
    focal_loss,
    focal_terms,
    pair_cross_entropy,
    sample_entropy,
)


def maxl_iteration(model: nn.Module, generator: nn.Module, optimizer: torch.optim.Optimizer,
                   gen_optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, alpha: float,
                   gamma: float, entropy_weight: float, order: int = 2, l1_decay: float = 0.0,
                   meta_batch: tuple[torch.Tensor, torch.Tensor] | None = None, fused: bool = False,
                   **objective: Any) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: a training step on theta1, then a meta step on theta2.

    Without `meta_batch` the meta step reuses the training batch (the authors' code), and one
    generator forward serves both steps; with it (held-out data, the paper's text) the training
    step's labels need no graph at all.

    fused=True (same batch only) runs the meta step first, from the current theta1, so that its
    look-ahead theta1 - alpha grad L_train(theta1; t) *is* the training step: the training step
    then applies that gradient instead of computing it again. Same labels for the training step,
    same exact meta-gradient, but of the step actually taken rather than of a second step on
    the batch; about one forward-backward pass cheaper.
    """
    if fused:
        if meta_batch is not None:
            raise ValueError("a fused iteration needs the meta step to reuse the training batch")
        return fused_iteration(model, generator, optimizer, gen_optimizer, x, y, alpha, gamma, entropy_weight,
                               order, l1_decay, **objective)
    if meta_batch is None:
        labels = generator(x, y)
        target = labels.detach()
    else:
        with torch.no_grad():
            target = generator(x, y)
    loss_pri, loss_aux, correct = train_step(model, optimizer, x, y, target, gamma, reduce=objective.get("reduce"))
    mx, my = (x, y) if meta_batch is None else meta_batch
    if meta_batch is not None:
        labels = generator(mx, my)
    before, after = meta_step(model, generator, gen_optimizer, mx, my, labels, alpha, gamma, entropy_weight,
                              order, l1_decay, **objective)
    return {"loss_pri": loss_pri, "loss_aux": loss_aux, "correct": correct, "target": target,
            "meta_before": before, "meta_after": after}


def fused_iteration(model: nn.Module, generator: nn.Module, optimizer: torch.optim.Optimizer,
                    gen_optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, alpha: float,
                    gamma: float, entropy_weight: float, order: int = 2, l1_decay: float = 0.0, **objective: Any
                    ) -> dict[str, torch.Tensor]:
    """The meta step first, from the current theta1; its look-ahead gradient then *is* the training step."""
    labels = generator(x, y)
    m = meta_gradient(model, _trainable(generator), x, y, labels, alpha, gamma, entropy_weight, order,
                      training_forward=True, **objective)
    _apply(generator, gen_optimizer, m.gen_grads, l1_decay)
    for p, g in zip(model.parameters(), m.inner_grads, strict=True):
        p.grad = g  # the look-ahead's gradient is the training step's gradient
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss_pri": m.loss_before, "loss_aux": m.loss_aux, "correct": m.correct, "target": labels.detach(),
            "meta_before": m.loss_before, "meta_after": m.loss_after}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, aux_target: torch.Tensor | None, gamma: float,
               reduce: Callable[[list[torch.Tensor]], None] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1: theta1 <- theta1 - alpha grad[L(f_pri(x), y) + L(f_aux(x), t)], t held fixed.

    `aux_target` is None for single-task training. `reduce` (data-parallel runs) averages the
    gradients over the processes in place between backward and step. Returns detached (primary
    loss, auxiliary loss, number of correct primary predictions).
    """
    pri, aux = model(x)
    loss_pri = focal_loss(pri, y, gamma)
    loss_aux = focal_loss(aux, aux_target, gamma) if aux_target is not None else torch.zeros_like(loss_pri)
    optimizer.zero_grad(set_to_none=True)
    (loss_pri + loss_aux).backward()
    if reduce is not None:
        reduce([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    return loss_pri.detach(), loss_aux.detach(), (pri.detach().argmax(1) == y).sum()


def meta_step(model: nn.Module, generator: nn.Module, gen_optimizer: torch.optim.Optimizer,
              x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float,
              entropy_weight: float, order: int = 2, l1_decay: float = 0.0, **objective: Any
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: theta2 <- theta2 - beta grad_theta2[L(f_pri(x; theta1+), y) + lambda H(g(x, y))].

    `labels` = g(x, y; theta2) *with* its graph to theta2 (the caller may share it with the
    training step when the meta batch is the training batch). Returns detached primary losses
    on the meta batch before and after the look-ahead.
    """
    m = meta_gradient(model, _trainable(generator), x, y, labels, alpha, gamma, entropy_weight, order, **objective)
    _apply(generator, gen_optimizer, m.gen_grads, l1_decay)
    return m.loss_before, m.loss_after


class MetaGradient(NamedTuple):
    """What a meta step computes: theta2's gradient, and the look-ahead's own by-products."""

    gen_grads: list[torch.Tensor]     # gradient of the meta objective for each generator parameter
    loss_before: torch.Tensor         # primary loss on the meta batch at theta1
    loss_after: torch.Tensor          # ... and at the look-ahead theta1+
    inner_grads: list[torch.Tensor]   # grad L_train(theta1; t), the look-ahead's step direction
    loss_aux: torch.Tensor            # auxiliary loss at theta1
    correct: torch.Tensor             # primary predictions right at theta1


def meta_gradient(model: nn.Module, gen_params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  labels: torch.Tensor, alpha: float, gamma: float, entropy_weight: float, order: int = 2,
                  training_forward: bool = False, usage: str = "batch", sharpness_weight: float = 0.0,
                  meta_scale: float = 1.0, pair_labels: torch.Tensor | None = None,
                  consistency_weight: float = 0.0,
                  reduce: Callable[[list[torch.Tensor]], None] | None = None) -> MetaGradient:
    """The generator's gradient of the meta objective, and the meta losses before/after the look-ahead.

    The look-ahead theta1+ = theta1 - alpha grad L_train(theta1; t) is computed functionally:
    the real weights and batch-norm running statistics do not move. order=2 is exact;
    order=1 replaces the Jacobian-vector product below by the central finite difference of
    DARTS. `labels` = t = g(x, y; theta2), with its graph. training_forward=True makes the
    forward at theta1 a real training forward (it updates the running statistics), for the
    fused iteration whose look-ahead is the training step.

    The objective (`**objective` of the callers) is
      meta_scale * L_pri(theta1+) + entropy_weight * H_usage(t) + sharpness_weight * mean_b H(t_b),
    H_usage the negative entropy of the batch-mean label over all K classes (usage="batch", the
    paper) or of each primary block's mean label (usage="block"); meta_scale=1/alpha makes the
    meta-signal the look-ahead's directional derivative, which does not shrink with the step size.
    With `pair_labels` = g(x', y) of another view x' of the same images (with its graph), a
    consistency term consistency_weight * symmetric cross-entropy(t, t') asks a label to survive
    a small shift of its image, so the labels describe the content rather than its position.

    Data-parallel runs pass `reduce`, which averages tensors over the processes in place. Each
    process holds a share of the batch; averaging the look-ahead's gradient, the look-ahead
    primary gradient v and the generator gradients makes the look-ahead and the second-order
    term those of the whole batch (exact for the primary term; the regularisers, being
    nonlinear in the batch, are taken over each process's share).
    """
    params = dict(model.named_parameters())
    stats = _no_running_stats(model)  # look-aheads use batch statistics and must not update the real ones
    pri, aux = functional_call(model, (params, dict(model.named_buffers()) if training_forward else stats), (x,))
    loss_before, loss_aux = focal_loss(pri, y, gamma), focal_loss(aux, labels.detach(), gamma)
    grads = list(torch.autograd.grad(loss_before + loss_aux, list(params.values())))
    if reduce is not None:
        reduce(grads)
    fast = {n: (p - alpha * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads, strict=True)}
    loss_after = focal_loss(functional_call(model, (fast, stats), (x,))[0], y, gamma)
    v = torch.autograd.grad(loss_after, list(fast.values()), allow_unused=True)  # the aux head gets None
    v = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(fast.items(), v, strict=True)}
    if reduce is not None:
        reduce(list(v.values()))

    # theta1+ depends on theta2 only through t, and L_train is *linear* in t:
    #   L_aux(theta1; t) = mean_b sum_k t_bk l_bk(theta1),  l = focal_terms(f_aux(x; theta1)).
    # So the chain rule through the look-ahead gives, exactly,
    #   d L_pri(theta1+) / d t_bk = -alpha <grad_theta1 l_bk(theta1), v> / B,   v = grad L_pri(theta1+),
    # a forward-mode Jacobian-vector product: the second-order term without a double backward.
    theta = {n: p.detach() for n, p in params.items()}

    def aux_terms(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return focal_terms(functional_call(model, (p, stats), (x,))[1], gamma) / len(x)

    if order == 2:
        with fwAD.dual_level():  # forward-mode AD: theta carries the tangent v
            u = fwAD.unpack_dual(aux_terms({n: fwAD.make_dual(p, v[n]) for n, p in theta.items()})).tangent
    else:
        eps = 0.01 / torch.sqrt(sum((g ** 2).sum() for g in v.values()))
        with torch.no_grad():
            plus = aux_terms({n: p + eps * v[n] for n, p in theta.items()})
            minus = aux_terms({n: p - eps * v[n] for n, p in theta.items()})
        u = (plus - minus) / (2 * eps)
    # the regularisers enter directly (the authors' first-order code leaves the entropy term out)
    usage_term = entropy_regulariser(labels) if usage == "batch" else block_usage_regulariser(labels, y)
    objective = -meta_scale * alpha * (labels * u.detach()).sum() + entropy_weight * usage_term
    if sharpness_weight:
        objective = objective + sharpness_weight * sample_entropy(labels)
    if consistency_weight and pair_labels is not None:
        objective = objective + consistency_weight * pair_cross_entropy(labels, pair_labels)
    gen_grads = list(torch.autograd.grad(objective, gen_params))
    if reduce is not None:
        reduce(gen_grads)
    correct = (pri.detach().argmax(1) == y).sum()
    return MetaGradient(gen_grads, loss_before.detach(), loss_after.detach(), list(grads), loss_aux.detach(),
                        correct)


def _trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _apply(generator: nn.Module, gen_optimizer: torch.optim.Optimizer, grads: list[torch.Tensor],
           l1_decay: float) -> None:
    """theta2 <- optimiser step with the meta-gradient (+ an L1 decay term, the paper's text)."""
    for p, g in zip(_trainable(generator), grads, strict=True):
        p.grad = g + l1_decay * torch.sign(p.detach()) if l1_decay else g
    gen_optimizer.step()
    gen_optimizer.zero_grad(set_to_none=True)


def _no_running_stats(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Buffers for a functional call that neither reads nor updates batch-norm running statistics."""
    bn = ("running_mean", "running_var", "num_batches_tracked")
    return {n: None if n.rsplit(".", 1)[-1] in bn else b for n, b in model.named_buffers()}


def grad_cosine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux_target: torch.Tensor,
                gamma: float, shared: nn.Module) -> float:
    """Cosine similarity of the primary and auxiliary loss gradients on the shared parameters.

    A diagnostic of the paper (two extra backward passes, so off by default); leaves no .grad.
    """
    pri, aux = model(x)
    params = [p for p in shared.parameters() if p.requires_grad]
    g_pri = torch.autograd.grad(focal_loss(pri, y, gamma), params, retain_graph=True)
    g_aux = torch.autograd.grad(focal_loss(aux, aux_target, gamma), params)
    a = torch.cat([g.flatten() for g in g_pri])
    b = torch.cat([g.flatten() for g in g_aux])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))
