"""--aux-weighting learned: AuxiLearn's non-negative per-sample loss weights, trained by the meta-signal.

Checked against a double backward written without auxgen.maxl (float64, batch norm), at a
weighting far from its start; at its start it must be the fixed weighting exactly.
"""

import copy

import pytest
import torch
from conftest import tiny_config
from test_maxl import ALPHA, GAMMA, LAM, _setup
from torch.func import functional_call

from auxgen.errors import AuxgenError
from auxgen.losses import entropy_regulariser, focal_loss, focal_terms
from auxgen.maxl import LossWeighting, meta_gradient, train_step
from auxgen.steps import paper_objective
from auxgen.trainer import train


def _weighting(seed=3, moved=True):
    torch.manual_seed(seed)
    w = LossWeighting().double()
    if moved:  # far from w = 1, so every part of the weights' gradient matters
        with torch.no_grad():
            for p in w.parameters():
                p.add_(torch.randn_like(p))
    return w


def _obj(weighting, order=2):
    return paper_objective(ALPHA, GAMMA, meta_order=order, entropy_weight=LAM, weighting=weighting)


def _double_backward(f, g, weighting, x, y):
    """d/d(theta2, weighting) of L_pri(theta1 - alpha grad L_train) + lambda H(t), the direct way."""
    labels = g(x, y)
    params = dict(f.named_parameters())
    buffers = {n: b.clone() for n, b in f.named_buffers()}
    pri, aux = functional_call(f, (params, buffers), (x,))
    l_pri = focal_terms(pri, GAMMA).gather(1, y[:, None])[:, 0]
    l_aux = (labels * focal_terms(aux, GAMMA)).sum(1)
    w = weighting(l_pri.detach(), l_aux.detach())  # the weights see the losses as plain numbers
    inner = (w[:, 0] * l_pri).mean() + (w[:, 1] * l_aux).mean()
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {n: p - ALPHA * gr for (n, p), gr in zip(params.items(), grads, strict=True)}
    outer = focal_loss(functional_call(f, (fast, buffers), (x,))[0], y, GAMMA) + LAM * entropy_regulariser(labels)
    return torch.autograd.grad(outer, [*g.parameters(), *weighting.parameters()])


def test_learned_weights_meta_gradient_matches_double_backward():
    for seed in (0, 1):
        _, f, g, x, y = _setup(seed)
        weighting = _weighting(seed)
        params = [*g.parameters(), *weighting.parameters()]
        ours = meta_gradient(f, params, x, y, g(x, y), _obj(weighting)).gen_grads
        ref = _double_backward(f, g, weighting, x, y)
        for a, b in zip(ours, ref, strict=True):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
        # the weighting's own gradient is not zero: the check above covers it
        assert max(float(gr.abs().max()) for gr in ours[-4:]) > 1e-6


def test_first_order_meta_gradient_of_the_weights_is_close_to_the_exact_one():
    _, f, g, x, y = _setup(0)
    weighting = _weighting()
    params = [*g.parameters(), *weighting.parameters()]
    exact = meta_gradient(f, params, x, y, g(x, y), _obj(weighting)).gen_grads
    approx = meta_gradient(f, params, x, y, g(x, y), _obj(weighting, order=1)).gen_grads
    a, b = (torch.cat([t.flatten() for t in gs[-4:]]) for gs in (exact, approx))
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


def test_at_its_start_the_learned_weighting_is_the_fixed_one():
    _, f, g, x, y = _setup(0)
    weighting = _weighting(moved=False)
    w = weighting(torch.rand(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64))
    assert torch.equal(w, torch.ones_like(w))
    params = list(g.parameters())
    learned = meta_gradient(f, [*params, *weighting.parameters()], x, y, g(x, y), _obj(weighting)).gen_grads
    fixed = meta_gradient(f, params, x, y, g(x, y), _obj(None)).gen_grads
    for a, b in zip(learned, fixed, strict=False):  # the generator's part
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    # and theta1's training step is the fixed one's
    f2, target = copy.deepcopy(f), g(x, y).detach()
    for net, obj in ((f, _obj(weighting)), (f2, _obj(None))):
        train_step(net, torch.optim.SGD(net.parameters(), lr=ALPHA), x, y, target, obj)
    for a, b in zip(f.parameters(), f2.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_weights_are_non_negative_and_per_sample():
    weighting = _weighting()
    w = weighting(torch.rand(50, dtype=torch.float64) * 5, torch.rand(50, dtype=torch.float64) * 5)
    assert w.shape == (50, 2) and bool((w >= 0).all())
    assert float(w.detach().std(0).min()) > 0  # not one weight for all samples


def test_learned_weighting_needs_the_meta_signal():
    with pytest.raises(AuxgenError, match="--meta-weight above 0"):
        tiny_config(aux_weighting="learned", meta_weight=0.0).validate()
    with pytest.raises(AuxgenError, match="--method maxl"):
        tiny_config(aux_weighting="learned", method="single").validate()


@pytest.mark.parametrize("extra", [{}, {"hypergradient": "implicit", "meta_split": 0.2}, {"fused_lookahead": True}])
def test_a_run_with_learned_weights_trains_them_and_saves_them(tmp_path, extra):
    cfg = tiny_config(epochs=1, aux_weighting="learned", **extra)
    run = train(cfg, tmp_path / "run", show=False, return_run=True)["run"]
    last = run.generator.loss_weighting.net[2]  # starts at zero: the meta-signal moved it
    assert float(last.weight.detach().abs().max()) > 0 and float(last.bias.detach().abs().max()) > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert any("loss_weighting" in k for k in state["generator"])


def test_an_export_of_a_learned_weighting_run_verifies(tmp_path):
    from auxgen import api
    from auxgen.verify import verify

    train(tiny_config(epochs=1, aux_weighting="learned"), tmp_path / "run", show=False)
    api.export(tmp_path / "run", tmp_path / "labels.h5", generator_formats="pt2")
    report = verify(tmp_path / "run", tmp_path / "labels.h5", checkpoint="last")
    assert report.passed, report.to_dict()
