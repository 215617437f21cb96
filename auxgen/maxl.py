"""MAXL, Algorithm 1 of Liu, Davison & Johns (2019): one iteration is a training step on the
multi-task network (theta1) and a meta step on the label generator (theta2).

Everything here is plain functions over modules and tensors: no device, rank or dtype
decisions are made here, so the trainer can wrap them (autocast, DDP, compile) freely.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from auxgen.losses import entropy_regulariser, focal_loss


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, aux_target: torch.Tensor | None, gamma: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1: theta1 <- theta1 - alpha grad[L(f_pri(x), y) + L(f_aux(x), t)], t held fixed.

    `aux_target` is None for single-task training. Returns detached (primary loss,
    auxiliary loss, number of correct primary predictions).
    """
    pri, aux = model(x)
    loss_pri = focal_loss(pri, y, gamma)
    loss_aux = focal_loss(aux, aux_target, gamma) if aux_target is not None else torch.zeros_like(loss_pri)
    optimizer.zero_grad(set_to_none=True)
    (loss_pri + loss_aux).backward()
    optimizer.step()
    return loss_pri.detach(), loss_aux.detach(), (pri.detach().argmax(1) == y).sum()


def meta_step(model: nn.Module, generator: nn.Module, gen_optimizer: torch.optim.Optimizer,
              x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float,
              entropy_weight: float, order: int = 2, l1_decay: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: theta2 <- theta2 - beta grad_theta2[L(f_pri(x; theta1+), y) + lambda H(g(x, y))].

    `labels` = g(x, y; theta2) *with* its graph to theta2 (the caller may share it with the
    training step when the meta batch is the training batch). Returns detached primary losses
    on the meta batch before and after the look-ahead.
    """
    gen_params = [p for p in generator.parameters() if p.requires_grad]
    gen_grads, loss_before, loss_after = meta_gradient(model, gen_params, x, y, labels, alpha, gamma,
                                                       entropy_weight, order)
    for p, g in zip(gen_params, gen_grads, strict=True):
        p.grad = g + l1_decay * torch.sign(p.detach()) if l1_decay else g
    gen_optimizer.step()
    gen_optimizer.zero_grad(set_to_none=True)
    return loss_before, loss_after


def meta_gradient(model: nn.Module, gen_params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  labels: torch.Tensor, alpha: float, gamma: float, entropy_weight: float, order: int = 2
                  ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The generator's gradient of the meta objective, and the meta losses before/after the look-ahead.

    theta1+ is a look-ahead SGD step computed functionally: the real weights and batch-norm
    running statistics do not move. order=2 differentiates through the look-ahead exactly
    (double backward); order=1 uses the finite-difference Hessian-vector product of DARTS.
    """
    params = dict(model.named_parameters())
    # the look-ahead runs in train mode (batch statistics) and would update running stats
    # in place: give it copies so the real ones stay untouched
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    pri, aux = functional_call(model, (params, buffers), (x,))
    loss_before = focal_loss(pri, y, gamma)

    if order == 2:
        # theta1+ = theta1 - alpha grad L_train(theta1; labels): keep the graph so that
        # theta1+ is a function of theta2 through `labels`
        inner = loss_before + focal_loss(aux, labels, gamma)
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        fast = {n: p - alpha * g for (n, p), g in zip(params.items(), grads, strict=True)}
        pri_fast, _ = functional_call(model, (fast, buffers), (x,))
        loss_after = focal_loss(pri_fast, y, gamma)
        objective = loss_after + entropy_weight * entropy_regulariser(labels)
        gen_grads = torch.autograd.grad(objective, gen_params)
    else:
        inner = loss_before + focal_loss(aux, labels.detach(), gamma)
        grads = torch.autograd.grad(inner, list(params.values()))
        fast = {n: (p - alpha * g).detach().requires_grad_() for (n, p), g in
                zip(params.items(), grads, strict=True)}
        pri_fast, _ = functional_call(model, (fast, buffers), (x,))
        loss_after = focal_loss(pri_fast, y, gamma)
        # d = grad of the primary loss at theta1+; the auxiliary head does not enter it
        d = torch.autograd.grad(loss_after, list(fast.values()), allow_unused=True)
        d = [torch.zeros_like(p) if g is None else g for p, g in zip(fast.values(), d, strict=True)]
        eps = 0.01 / torch.sqrt(sum((g ** 2).sum() for g in d))
        with torch.no_grad():
            shifted = [{n: p + s * eps * dg for (n, p), dg in zip(params.items(), d, strict=True)}
                       for s in (1.0, -1.0)]
            aux_plus = functional_call(model, (shifted[0], buffers), (x,))[1]
            aux_minus = functional_call(model, (shifted[1], buffers), (x,))[1]
        # grad_theta2 of this surrogate = -alpha [grad L_train(theta+) - grad L_train(theta-)] / 2eps
        # + lambda grad H: the DARTS Hessian-vector product plus the entropy term's own gradient
        hvp = (focal_loss(aux_plus, labels, gamma) - focal_loss(aux_minus, labels, gamma)) / (2 * eps)
        objective = -alpha * hvp + entropy_weight * entropy_regulariser(labels)
        gen_grads = torch.autograd.grad(objective, gen_params)
    return list(gen_grads), loss_before.detach(), loss_after.detach()


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
