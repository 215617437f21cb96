"""MAXL, Algorithm 1 of Liu, Davison & Johns (2019): one iteration is a training step on the
multi-task network (theta1) and a meta step on the label generator (theta2).

Everything here is plain functions over modules and tensors: no device, rank or dtype
decisions are made here, so the trainer can wrap them (autocast, DDP, compile) freely.
What the generator optimises is one value, an `Objective`; how a data-parallel run averages
tensors is one callable, `reduce` (None for one process).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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
    pair_mutual_information,
    sample_entropy,
)

Reduce = Callable[[list[torch.Tensor]], None]  # averages tensors over the processes, in place


@dataclass(frozen=True)
class Objective:
    """theta2's objective for one epoch, and the losses the look-ahead differentiates through:

      meta_weight * s * L_pri(theta1+)                 the meta-signal, s = 1 or 1/alpha (meta_norm)
      + entropy_weight * H_usage(t)                    usage of the auxiliary classes (negative entropy)
      + sharpness_weight * mean_b H(t_b)               confident labels
      + consistency_weight * CE_sym(t, t')             a view t' of the same images agrees with t
      + invariance_weight * -I(t; t')                  ... and the two views' classes share information
      + gen_l1 * |theta2|_1                            the paper text's L1 decay of the generator

    theta1+ = theta1 - alpha grad L_train, L_train = mean_b [w_pri l_pri,b + aux_weight w_aux l_aux,b],
    with w = 1 or, with a `weighting`, learned non-negative per-sample weights (AuxiLearn's
    combination of per-sample losses) that theta2's meta-signal trains too. H_usage is the batch-mean
    label's over all K (usage_entropy="batch", the paper) or each primary block's ("block").
    Field names are the config's: a new term is one field here, one line in `terms`, one config
    field and one argument in steps.objective_for.
    """

    # no defaults: the config is their one source (steps.objective_for gives every field; the paper's
    # values are --preset paper's, steps.paper_objective)
    alpha: float                      # the look-ahead's inner step: theta1's learning rate this epoch
    gamma: float                      # focal loss focusing parameter
    aux_weight: float                 # the auxiliary loss's weight in L_train
    meta_order: int                   # 2: exact second-order meta-gradient; 1: DARTS' finite difference
    neumann_steps: int                # implicit hypergradient: Hessian-vector products of its Neumann series
    meta_weight: float
    meta_norm: str
    entropy_weight: float
    usage_entropy: str
    sharpness_weight: float
    consistency_weight: float
    invariance_weight: float
    gen_l1: float
    weighting: nn.Module | None       # w(l_pri, l_aux) per sample, a part of theta2 (None: w = 1)

    @property
    def needs_pair(self) -> bool:
        """Whether a term compares the labels of two views of the same images."""
        return bool(self.consistency_weight or self.invariance_weight)

    def meta_signal(self, labels: torch.Tensor, u: torch.Tensor, lw: LearnedWeights | None = None
                    ) -> torch.Tensor:
        """meta_weight * s * (the first-order change of L_pri(theta1+) with t): -alpha * aux_weight * <t, u>.

        L_train is linear in the weighted targets w_aux t and w_pri onehot(y), so with learned
        weights the same tangents give their part: -alpha * (aux_weight <w_aux t, u> + <w_pri, q_y>).
        """
        scale = self.meta_weight / (self.alpha if self.meta_norm == "alpha" else 1.0)
        if lw is None:
            return -scale * self.alpha * self.aux_weight * (labels * u).sum()
        aux = (lw.w[:, 1:] * labels * u).sum()
        return -scale * self.alpha * (self.aux_weight * aux + (lw.w[:, 0] * lw.q).sum())

    def train_loss(self, pri: torch.Tensor, aux: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """L_train of the heads' logits, its unweighted primary and auxiliary means, and the learned weights.

        The weights enter L_train detached (theta1 does not train them) and are returned with their
        graph (None when fixed), for the meta-signal.
        """
        l_pri = focal_terms(pri, self.gamma).gather(1, y[:, None])[:, 0]
        l_aux = (target * focal_terms(aux, self.gamma)).sum(1) if target is not None else torch.zeros_like(l_pri)
        if self.weighting is None or target is None:
            return l_pri.mean() + self.aux_weight * l_aux.mean(), l_pri.mean(), l_aux.mean(), None
        w = self.weighting(l_pri.detach(), l_aux.detach())
        wd = w.detach()
        loss = (wd[:, 0] * l_pri).mean() + self.aux_weight * (wd[:, 1] * l_aux).mean()
        return loss, l_pri.mean(), l_aux.mean(), w

    def terms(self, labels: torch.Tensor, y: torch.Tensor, pair: torch.Tensor | None,
              gen_params: list[torch.Tensor]) -> torch.Tensor:
        """The label terms of the objective (everything but the meta-signal)."""
        usage = entropy_regulariser(labels) if self.usage_entropy == "batch" else block_usage_regulariser(labels, y)
        total = self.entropy_weight * usage
        if self.sharpness_weight:
            total = total + self.sharpness_weight * sample_entropy(labels)
        if self.consistency_weight and pair is not None:
            total = total + self.consistency_weight * pair_cross_entropy(labels, pair)
        if self.invariance_weight and pair is not None:
            total = total - self.invariance_weight * pair_mutual_information(labels, pair)
        if self.gen_l1:
            total = total + self.gen_l1 * sum(p.abs().sum() for p in gen_params)
        return total


class LearnedWeights(NamedTuple):
    """Per-sample learned loss weights w [B, 2] (primary, auxiliary) with their graph, and the tangent q [B]
    of each sample's primary loss along the look-ahead's direction (the primary analogue of u)."""

    w: torch.Tensor
    q: torch.Tensor


class LossWeighting(nn.Module):
    """w(l_pri, l_aux) = 2 sigmoid(MLP(log(1 + l))) in (0, 2) per sample, two weights: AuxiLearn's learned
    non-negative combination of per-sample losses, bounded so no sample's loss can take over the step.
    It starts at exactly w = 1 (the fixed weighting): the last layer starts at zero."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, l_pri: torch.Tensor, l_aux: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(self.net(torch.stack([l_pri, l_aux], 1).log1p()))


class Nets(NamedTuple):
    """The two networks and their optimisers: theta1 (multi-task) and theta2 (label generator)."""

    model: nn.Module
    generator: nn.Module | None
    opt: torch.optim.Optimizer
    gen_opt: torch.optim.Optimizer | None


def maxl_iteration(nets: Nets, x: torch.Tensor, y: torch.Tensor, objective: Objective,
                   meta_batch: tuple[torch.Tensor, torch.Tensor] | None = None, pair: torch.Tensor | None = None,
                   reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: a training step on theta1, then a meta step on theta2.

    Without `meta_batch` the meta step reuses the training batch (the authors' code), and one
    generator forward serves both steps; with it (held-out data, the paper's text) the training
    step's labels need no graph at all. `pair`: the generator's labels of another view of the
    meta batch, for the objective's pair terms.
    """
    if meta_batch is None:
        labels = nets.generator(x, y)
        target = labels.detach()
    else:
        with torch.no_grad():
            target = nets.generator(x, y)
    loss_pri, loss_aux, correct = train_step(nets.model, nets.opt, x, y, target, objective, reduce)
    mx, my = (x, y) if meta_batch is None else meta_batch
    if meta_batch is not None:
        labels = nets.generator(mx, my)
    losses = meta_step(nets, mx, my, labels, objective, pair, reduce)
    out = {"loss_pri": loss_pri, "loss_aux": loss_aux, "correct": correct, "target": target}
    if losses is not None:
        out["meta_before"], out["meta_after"] = losses
    return out


def fused_iteration(nets: Nets, x: torch.Tensor, y: torch.Tensor, objective: Objective,
                    pair: torch.Tensor | None = None, reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """The meta step first, from the current theta1; its look-ahead gradient then *is* the training step.

    Same labels for the training step, same exact meta-gradient, but of the step actually taken
    rather than of a second step on the batch; about one forward-backward pass cheaper.
    """
    labels = nets.generator(x, y)
    m = meta_gradient(nets.model, _trainable(nets.generator), x, y, labels, objective, pair=pair,
                      training_forward=True, reduce=reduce)
    _apply(nets.generator, nets.gen_opt, m.gen_grads)
    for p, g in zip(nets.model.parameters(), m.inner_grads, strict=True):
        p.grad = g  # the look-ahead's gradient is the training step's gradient
    nets.opt.step()
    nets.opt.zero_grad(set_to_none=True)
    return {"loss_pri": m.loss_before, "loss_aux": m.loss_aux, "correct": m.correct, "target": labels.detach(),
            "meta_before": m.loss_before, "meta_after": m.loss_after}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               aux_target: torch.Tensor | None, objective: Objective, reduce: Reduce | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1: theta1 <- theta1 - alpha grad L_train(f(x), y, t), t held fixed (Objective.train_loss).

    `aux_target` is None for single-task training. Returns detached (primary loss, auxiliary
    loss, number of correct primary predictions).
    """
    pri, aux = model(x)
    loss, loss_pri, loss_aux, _ = objective.train_loss(pri, aux, y, aux_target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reduce is not None:
        reduce([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    return loss_pri.detach(), loss_aux.detach(), (pri.detach().argmax(1) == y).sum()


def meta_step(nets: Nets, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, objective: Objective,
              pair: torch.Tensor | None = None, reduce: Reduce | None = None
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Step 2: theta2 <- theta2 - beta grad_theta2 [objective], through the look-ahead theta1+.

    `labels` = g(x, y; theta2) *with* its graph to theta2 (the caller may share it with the
    training step when the meta batch is the training batch). Returns detached primary losses
    on the meta batch before and after the look-ahead; None when the objective has no
    meta-signal (meta_weight 0), whose step needs no look-ahead at all.
    """
    gen_params = _trainable(nets.generator)
    if not objective.meta_weight:
        grads = list(torch.autograd.grad(objective.terms(labels, y, pair, gen_params), gen_params))
        if reduce is not None:
            reduce(grads)
        _apply(nets.generator, nets.gen_opt, grads)
        return None
    m = meta_gradient(nets.model, gen_params, x, y, labels, objective, pair=pair, reduce=reduce)
    _apply(nets.generator, nets.gen_opt, m.gen_grads)
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
                  labels: torch.Tensor, objective: Objective, pair: torch.Tensor | None = None,
                  training_forward: bool = False, reduce: Reduce | None = None) -> MetaGradient:
    """The generator's gradient of the objective, and the meta losses before/after the look-ahead.

    The look-ahead theta1+ = theta1 - alpha grad L_train(theta1; t) is computed functionally:
    the real weights and batch-norm running statistics do not move. `labels` = t = g(x, y; theta2)
    and `pair` = g(x', y) of another view x' of the same images, both with their graphs.
    training_forward=True makes the forward at theta1 a real training forward (it updates the
    running statistics), for the fused iteration whose look-ahead is the training step.

    Data-parallel runs pass `reduce`. Each process holds a share of the batch; averaging the
    look-ahead's gradient, the look-ahead primary gradient v and the generator gradients makes
    the look-ahead and the second-order term those of the whole batch (exact for the primary
    term; the regularisers, being nonlinear in the batch, are taken over each process's share).
    """
    alpha, gamma = objective.alpha, objective.gamma
    params = dict(model.named_parameters())
    stats = _no_running_stats(model)  # look-aheads use batch statistics and must not update the real ones
    pri, aux = functional_call(model, (params, dict(model.named_buffers()) if training_forward else stats), (x,))
    loss_train, loss_before, loss_aux, w = objective.train_loss(pri, aux, y, labels.detach())
    grads = list(torch.autograd.grad(loss_train, list(params.values())))
    if reduce is not None:
        reduce(grads)
    fast = {n: (p - alpha * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads, strict=True)}
    loss_after = focal_loss(functional_call(model, (fast, stats), (x,))[0], y, gamma)
    v = dict(zip(fast, _grads(loss_after, fast, reduce), strict=True))  # zeros on the aux head

    # theta1+ depends on theta2 only through t (and the learned weights), and L_train is *linear* in t:
    #   L_aux(theta1; t) = mean_b sum_k t_bk l_bk(theta1),  l = focal_terms(f_aux(x; theta1)).
    # So the chain rule through the look-ahead gives, exactly,
    #   d L_pri(theta1+) / d t_bk = -alpha w <grad_theta1 l_bk(theta1), v> / B,   v = grad L_pri(theta1+),
    # a forward-mode Jacobian-vector product: the second-order term without a double backward.
    # The same pass gives q_b = <grad l_pri,b, v> / B, the learned primary weights' part.
    theta = {n: p.detach() for n, p in params.items()}

    if objective.meta_order == 2:  # forward-mode AD: theta carries the tangent v
        u, q = _loss_jvp(model, stats, x, y, gamma, theta, v)
    else:
        eps = 0.01 / torch.sqrt(sum((g ** 2).sum() for g in v.values()))
        with torch.no_grad():
            plus = _loss_terms(model, stats, x, y, gamma, {n: p + eps * v[n] for n, p in theta.items()})
            minus = _loss_terms(model, stats, x, y, gamma, {n: p - eps * v[n] for n, p in theta.items()})
        u, q = ((a - b) / (2 * eps) for a, b in zip(plus, minus, strict=True))
    lw = None if w is None else LearnedWeights(w, q.detach())
    # the regularisers enter directly (the authors' first-order code leaves the entropy term out)
    total = objective.meta_signal(labels, u.detach(), lw) + objective.terms(labels, y, pair, gen_params)
    gen_grads = list(torch.autograd.grad(total, gen_params))
    if reduce is not None:
        reduce(gen_grads)
    correct = (pri.detach().argmax(1) == y).sum()
    return MetaGradient(gen_grads, loss_before.detach(), loss_after.detach(), list(grads), loss_aux.detach(),
                        correct)


def implicit_step(nets: Nets, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, objective: Objective,
                  meta_batch: tuple[torch.Tensor, torch.Tensor], pair: torch.Tensor | None = None,
                  reduce: Reduce | None = None) -> torch.Tensor:
    """A generator step by the implicit hypergradient (AuxiLearn, Navon et al. 2021); returns the meta loss.

    theta1 is taken as a minimiser of L_train(.; t); by the implicit function theorem
      d L_pri(meta batch; theta1) / d t = -grad_theta L_pri^T  H^-1  d^2 L_train / d theta d t,
    H the Hessian of L_train on the training batch (x, y), with H^-1 ~ alpha sum_{j<=k} (I - alpha H)^j,
    a truncated Neumann series of k Hessian-vector products. L_train is linear in t, so the last
    factor is the same forward-mode product as the look-ahead's, along p = sum_j (I - alpha H)^j v.
    """
    gamma, alpha = objective.gamma, objective.alpha
    stats = _no_running_stats(nets.model)
    theta = {n: p.detach().requires_grad_() for n, p in nets.model.named_parameters()}
    mx, my = meta_batch
    loss_meta = focal_loss(functional_call(nets.model, (theta, stats), (mx,))[0], my, gamma)
    v = _grads(loss_meta, theta, reduce)
    pri, aux = functional_call(nets.model, (theta, stats), (x,))
    loss_train, _, _, w = objective.train_loss(pri, aux, y, labels.detach())
    g = torch.autograd.grad(loss_train, list(theta.values()), create_graph=True)
    term, p = v, v
    for _ in range(objective.neumann_steps):
        hv = torch.autograd.grad(g, list(theta.values()), grad_outputs=term, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(t) if h is None else h for t, h in zip(term, hv, strict=True)]
        if reduce is not None:
            reduce(hv)
        term = [t - alpha * h for t, h in zip(term, hv, strict=True)]
        p = [a + t for a, t in zip(p, term, strict=True)]
    theta = {n: q.detach() for n, q in theta.items()}
    u, q = _loss_jvp(nets.model, stats, x, y, gamma, theta, dict(zip(theta, p, strict=True)))
    gen_params = _trainable(nets.generator)
    lw = None if w is None else LearnedWeights(w, q)
    total = objective.meta_signal(labels, u, lw) + objective.terms(labels, y, pair, gen_params)
    gen_grads = list(torch.autograd.grad(total, gen_params))
    if reduce is not None:
        reduce(gen_grads)
    _apply(nets.generator, nets.gen_opt, gen_grads)
    return loss_meta.detach()


def _grads(loss: torch.Tensor, params: dict[str, torch.Tensor], reduce: Reduce | None) -> list[torch.Tensor]:
    """d loss / d params, zeros where a parameter does not reach the loss (the other head), averaged."""
    gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    gs = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), gs, strict=True)]
    if reduce is not None:
        reduce(gs)
    return gs


def _loss_terms(model: nn.Module, stats: dict, x: torch.Tensor, y: torch.Tensor, gamma: float,
                theta: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The auxiliary head's focal terms l_bk / B [B, K] and each sample's primary loss / B [B], at theta."""
    pri, aux = functional_call(model, (theta, stats), (x,))
    return focal_terms(aux, gamma) / len(x), focal_terms(pri, gamma).gather(1, y[:, None])[:, 0] / len(x)


def _loss_jvp(model: nn.Module, stats: dict, x: torch.Tensor, y: torch.Tensor, gamma: float,
              theta: dict[str, torch.Tensor], tangent: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """<grad_theta l, tangent> of both `_loss_terms`, (u [B, K], q [B]): one forward-mode pass."""
    with fwAD.dual_level():
        dual = {n: fwAD.make_dual(p, tangent[n]) for n, p in theta.items()}
        return tuple(fwAD.unpack_dual(t).tangent for t in _loss_terms(model, stats, x, y, gamma, dual))


def _trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _apply(generator: nn.Module, gen_optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
    """theta2 <- an optimiser step with the meta-gradient."""
    for p, g in zip(_trainable(generator), grads, strict=True):
        p.grad = g
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
