"""The meta step against independent computations, in float64 on a small model with batch norm."""

import copy

import torch
from torch.func import functional_call

from auxgen.hierarchy import Hierarchy
from auxgen.losses import entropy_regulariser, focal_loss
from auxgen.maxl import Nets, fused_iteration, meta_gradient, meta_step, train_step
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.steps import paper_objective

ALPHA, GAMMA, LAM = 0.1, 2.0, 0.2


def _obj(lam=LAM, order=2, **terms):
    return paper_objective(ALPHA, GAMMA, meta_order=order, entropy_weight=lam, **terms)


def _setup(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    h = Hierarchy((2, 3, 2))
    f = MultiTaskNet("cnn", 1, 3, h.num_aux, width=4).to(dtype).train()
    g = LabelGenerator("cnn", 1, h, width=4).to(dtype).train()
    x = torch.rand(6, 1, 8, 8, dtype=dtype) * 255
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return h, f, g, x, y


def _meta_objective(f, g, x, y):
    """F(theta2) = L_pri(f(x; theta1 - alpha grad L_train(theta1; g(x))), y) + lambda H(g(x)), by value only.

    Written independently of auxgen.maxl: a deep copy of f takes a real SGD step.
    """
    labels = g(x, y)
    f1 = copy.deepcopy(f)
    pri, aux = f1(x)
    loss = focal_loss(pri, y, GAMMA) + focal_loss(aux, labels, GAMMA)
    grads = torch.autograd.grad(loss, list(f1.parameters()))
    with torch.no_grad():
        for p, gr in zip(f1.parameters(), grads, strict=True):
            p -= ALPHA * gr
    pri_after, _ = f1(x)
    return (focal_loss(pri_after, y, GAMMA) + LAM * entropy_regulariser(labels)).detach()


def test_exact_meta_gradient_matches_finite_differences():
    _, f, g, x, y = _setup()
    params = list(g.parameters())
    grads = meta_gradient(f, params, x, y, g(x, y), _obj()).gen_grads
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # random directions: <grad F, v> against (F(t + hv) - F(t - hv)) / 2h
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        predicted = sum((gr * vi).sum() for gr, vi in zip(grads, v, strict=True))
        h = 1e-7  # float64: rounding ~1e-9, truncation negligible at this step
        vals = []
        for s in (1, -1):
            with torch.no_grad():
                for p, vi in zip(params, v, strict=True):
                    p += s * h * vi
            vals.append(_meta_objective(f, g, x, y))
            with torch.no_grad():
                for p, vi in zip(params, v, strict=True):
                    p -= s * h * vi
        fd = (vals[0] - vals[1]) / (2 * h)
        assert torch.allclose(predicted, fd, rtol=1e-4, atol=1e-9), (float(predicted), float(fd))
    # and the second-order term is not negligible here: without it the check would fail
    assert max(float(gr.abs().max()) for gr in grads) > 1e-6


def double_backward_meta_gradient(f, gen_params, x, y, labels):
    """Algorithm 1 written the direct way (the authors' style): differentiate through the look-ahead
    with create_graph=True, an independent check of auxgen's forward-mode formulation."""
    params = dict(f.named_parameters())
    buffers = {n: b.clone() for n, b in f.named_buffers()}
    pri, aux = functional_call(f, (params, buffers), (x,))
    inner = focal_loss(pri, y, GAMMA) + focal_loss(aux, labels, GAMMA)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {n: p - ALPHA * g for (n, p), g in zip(params.items(), grads, strict=True)}
    pri_fast, _ = functional_call(f, (fast, buffers), (x,))
    objective = focal_loss(pri_fast, y, GAMMA) + LAM * entropy_regulariser(labels)
    return torch.autograd.grad(objective, gen_params)


def test_exact_meta_gradient_matches_double_backward():
    for seed in (0, 1):
        _, f, g, x, y = _setup(seed)
        params = list(g.parameters())
        ours = meta_gradient(f, params, x, y, g(x, y), _obj()).gen_grads
        ref = double_backward_meta_gradient(f, params, x, y, g(x, y))
        for a, b in zip(ours, ref, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)


def test_meta_gradient_only_reaches_generator_through_lookahead_and_entropy():
    _, f, g, x, y = _setup()
    params = list(g.parameters())
    labels = g(x, y)
    with_entropy = meta_gradient(f, params, x, y, labels, _obj()).gen_grads
    no_entropy = meta_gradient(f, params, x, y, g(x, y), _obj(0.0)).gen_grads
    ent = torch.autograd.grad(LAM * entropy_regulariser(g(x, y)), params)
    for a, b, c in zip(with_entropy, no_entropy, ent, strict=True):
        assert torch.allclose(a, b + c, atol=1e-12)


def test_lookahead_leaves_weights_and_running_stats_untouched():
    _, f, g, x, y = _setup(dtype=torch.float32)
    before_f = copy.deepcopy(f.state_dict())
    before_g = copy.deepcopy(g.state_dict())
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    for order in (2, 1):
        meta_step(Nets(f, g, None, opt), x, y, g(x, y), _obj(order=order))
    for k, v in f.state_dict().items():
        assert torch.equal(v, before_f[k]), k  # weights, running_mean/var, num_batches_tracked
    assert all(p.grad is None for p in f.parameters())
    assert any(not torch.equal(v, before_g[k]) for k, v in g.state_dict().items() if "running" not in k)


def test_first_order_points_the_same_way_as_exact():
    _, f, g, x, y = _setup()
    params = list(g.parameters())
    exact, b2, a2 = meta_gradient(f, params, x, y, g(x, y), _obj())[:3]
    approx, b1, a1 = meta_gradient(f, params, x, y, g(x, y), _obj(order=1))[:3]
    e = torch.cat([t.flatten() for t in exact])
    a = torch.cat([t.flatten() for t in approx])
    assert torch.nn.functional.cosine_similarity(e, a, dim=0) > 0.99
    assert torch.allclose(b1, b2) and torch.allclose(a1, a2)  # the same look-ahead either way


def test_first_order_includes_the_entropy_gradient():
    _, f, g, x, y = _setup()
    params = list(g.parameters())
    with_entropy = meta_gradient(f, params, x, y, g(x, y), _obj(order=1)).gen_grads
    without = meta_gradient(f, params, x, y, g(x, y), _obj(0.0, order=1)).gen_grads
    ent = torch.autograd.grad(LAM * entropy_regulariser(g(x, y)), params)
    for a, b, c in zip(with_entropy, without, ent, strict=True):
        assert torch.allclose(a, b + c, atol=1e-10)


def test_train_step_updates_only_theta1_and_matches_manual_sgd():
    h, f, g, x, y = _setup()
    target = g(x, y).detach()
    f_ref = copy.deepcopy(f)
    opt = torch.optim.SGD(f.parameters(), lr=ALPHA)
    train_step(f, opt, x, y, target, _obj())
    pri, aux = f_ref(x)
    grads = torch.autograd.grad(focal_loss(pri, y, GAMMA) + focal_loss(aux, target, GAMMA),
                                list(f_ref.parameters()))
    for (n, p), p0, gr in zip(f.named_parameters(), f_ref.parameters(), grads, strict=True):
        assert torch.allclose(p, p0 - ALPHA * gr), n
    # the functional look-ahead equals that same SGD step
    params = dict(f_ref.named_parameters())
    fast = {n: p - ALPHA * gr for (n, p), gr in zip(params.items(), grads, strict=True)}
    out = functional_call(f_ref, (fast, {k: b.clone() for k, b in f_ref.named_buffers()}), (x,))
    assert torch.allclose(out[0], f(x)[0])


def test_fused_iteration_is_the_training_step_plus_the_exact_meta_step():
    _, f, g, x, y = _setup()
    f_ref, g_ref = copy.deepcopy(f), copy.deepcopy(g)
    # reference, by parts: the exact meta-gradient at the current theta1, and a training step with the same labels
    labels = g_ref(x, y)
    ref = double_backward_meta_gradient(f_ref, list(g_ref.parameters()), x, y, labels)
    train_step(f_ref, torch.optim.SGD(f_ref.parameters(), lr=ALPHA), x, y, labels.detach(), _obj())
    gen_before = [p.detach().clone() for p in g.parameters()]
    nets = Nets(f, g, torch.optim.SGD(f.parameters(), lr=ALPHA), torch.optim.SGD(g.parameters(), lr=1.0))
    fused_iteration(nets, x, y, _obj())
    for (n, p), q in zip(f.state_dict().items(), f_ref.state_dict().values(), strict=True):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), n  # weights and running stats (updated once)
    for p0, p, r in zip(gen_before, g.parameters(), ref, strict=True):
        assert torch.allclose(p0 - p, r, rtol=1e-8, atol=1e-12)  # SGD with lr 1: the step is the gradient
