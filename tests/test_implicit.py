"""The implicit hypergradient (IFT with a truncated Neumann series) against explicit linear algebra, float64.

A multi-task model that is linear in its input makes L_train convex in theta1, so its Hessian
can be formed exactly and the implicit function theorem's solution H^+ v computed directly.
"""

import copy

import torch
from torch import nn

from auxgen.hierarchy import Hierarchy
from auxgen.losses import focal_loss
from auxgen.maxl import Nets, implicit_step
from auxgen.models import LabelGenerator
from auxgen.steps import paper_objective

GAMMA = 0.0  # cross-entropy: convex in the logits of a linear model


class Linear2(nn.Module):
    """Primary logits W z + b; auxiliary logits M (W z + b) + c with M a fixed matrix: the heads share W, and
    both are linear in the parameters, so cross-entropy is convex in them."""

    def __init__(self, d: int, p: int, k: int) -> None:
        super().__init__()
        self.pri = nn.Linear(d, p)
        self.aux_bias = nn.Parameter(torch.zeros(k))
        self.register_buffer("mix", torch.randn(k, p))

    def forward(self, x):
        h = self.pri(x.flatten(1) / 255)
        return h, h @ self.mix.T + self.aux_bias


def _setup():
    torch.manual_seed(0)
    h = Hierarchy((2, 3, 2))
    f = Linear2(64, 3, h.num_aux).double()
    g = LabelGenerator("cnn", 1, h, width=4).double().train()
    x, mx = (torch.rand(12, 1, 8, 8, dtype=torch.float64) * 255 for _ in range(2))
    y, my = torch.tensor([0, 1, 2] * 4), torch.tensor([2, 1, 0] * 4)
    return f, g, x, y, mx, my


def _flat_hessian_and_v(f, x, y, t, mx, my, aux_weight):
    names = [n for n, _ in f.named_parameters()]
    shapes = [p.shape for p in f.parameters()]
    theta0 = torch.cat([p.detach().flatten() for p in f.parameters()])

    def unflat(theta):
        out, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            out[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return out

    def l_train(theta):
        pri, aux = torch.func.functional_call(f, unflat(theta), (x,))
        return focal_loss(pri, y, GAMMA) + aux_weight * focal_loss(aux, t, GAMMA)

    def l_meta(theta):
        return focal_loss(torch.func.functional_call(f, unflat(theta), (mx,))[0], my, GAMMA)

    H = torch.autograd.functional.hessian(l_train, theta0)
    v = torch.autograd.grad(l_meta(theta0.requires_grad_()), theta0)[0]
    return H, v, unflat, theta0.detach()


def _reference_gen_grad(f, g, x, y, p_flat, unflat, theta0, aux_weight):
    """-d/d theta2 [p . grad_theta L_train(theta; g(x))], p held fixed: the IFT hypergradient given p = H^-1 v."""
    labels = g(x, y)
    theta = theta0.clone().requires_grad_()
    pri, aux = torch.func.functional_call(f, unflat(theta), (x,))
    loss = focal_loss(pri, y, GAMMA) + aux_weight * focal_loss(aux, labels, GAMMA)
    (grad_theta,) = torch.autograd.grad(loss, theta, create_graph=True)
    return torch.autograd.grad(-(p_flat * grad_theta).sum(), list(g.parameters()))


def _our_gen_grad(f, g, x, y, mx, my, obj):
    """implicit_step with SGD at lr 1 on theta2: the parameter change is minus the gradient."""
    g = copy.deepcopy(g)
    before = [p.detach().clone() for p in g.parameters()]
    nets = Nets(f, g, None, torch.optim.SGD(g.parameters(), lr=1.0))
    implicit_step(nets, x, y, g(x, y), obj, (mx, my))
    return [b - p.detach() for b, p in zip(before, g.parameters(), strict=True)]


def test_truncated_neumann_series_is_the_explicit_matrix_series():
    f, g, x, y, mx, my = _setup()
    alpha, k, w = 0.3, 3, 0.5
    H, v, unflat, theta0 = _flat_hessian_and_v(f, x, y, g(x, y).detach(), mx, my, w)
    eye = torch.eye(len(v), dtype=v.dtype)
    p = alpha * sum(torch.linalg.matrix_power(eye - alpha * H, j) @ v for j in range(k + 1))
    ref = _reference_gen_grad(f, g, x, y, p, unflat, theta0, w)
    obj = paper_objective(alpha, GAMMA, aux_weight=w, entropy_weight=0.0, neumann_steps=k)
    ours = _our_gen_grad(f, g, x, y, mx, my, obj)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-13)
    assert max(float(a.abs().max()) for a in ours) > 1e-8  # not a trivial zero


def test_many_neumann_steps_reach_the_implicit_function_theorem_solution():
    f, g, x, y, mx, my = _setup()
    w = 1.0
    H, v, unflat, theta0 = _flat_hessian_and_v(f, x, y, g(x, y).detach(), mx, my, w)
    alpha = 1.0 / float(torch.linalg.eigvalsh(H).max())  # the series converges on H's range
    exact = torch.linalg.pinv(H, hermitian=True, rtol=1e-10) @ v
    ref = _reference_gen_grad(f, g, x, y, exact, unflat, theta0, w)
    ours = _our_gen_grad(f, g, x, y, mx, my, paper_objective(alpha, GAMMA, aux_weight=w, entropy_weight=0.0,
                                                        neumann_steps=3000))
    a = torch.cat([t.flatten() for t in ours])
    b = torch.cat([t.flatten() for t in ref])
    assert float((a - b).norm() / b.norm()) < 0.05, float((a - b).norm() / b.norm())
    few = torch.cat([t.flatten() for t in _our_gen_grad(f, g, x, y, mx, my, paper_objective(
        alpha, GAMMA, aux_weight=w, entropy_weight=0.0, neumann_steps=3))])
    assert float((few - b).norm()) > float((a - b).norm())  # more terms, closer: the series converges
