"""The label regularisers and objective variants against independent computations (float64)."""

import math

import torch
from conftest import tiny_config
from test_maxl import ALPHA, GAMMA, _setup

from auxgen.config import PRESETS, resolve_config
from auxgen.losses import block_usage_regulariser, focal_loss, pair_cross_entropy, sample_entropy
from auxgen.maxl import meta_gradient
from auxgen.steps import paper_objective
from auxgen.trainer import lr_at, setup


def _soft(seed=0, n=7, k=5):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64), 1).requires_grad_()


def test_block_usage_is_the_mean_negative_entropy_of_each_class_mean_label():
    t, y = _soft().detach(), torch.tensor([0, 1, 0, 2, 1, 0, 2])
    ref = 0.0
    for c in (0, 1, 2):  # written out: mean label of the class's rows, its negative entropy, averaged
        rows = [i for i in range(7) if int(y[i]) == c]
        ybar = [sum(float(t[i, k]) for i in rows) / len(rows) for k in range(5)]
        ref += sum(p * math.log(p) for p in ybar) / 3
    assert abs(float(block_usage_regulariser(t, y)) - ref) < 1e-12


def test_sample_entropy_and_pair_cross_entropy_values():
    a, b = _soft(0).detach(), _soft(1).detach()
    ref_h = -sum(float(a[i, k]) * math.log(float(a[i, k])) for i in range(7) for k in range(5)) / 7
    assert abs(float(sample_entropy(a)) - ref_h) < 1e-12
    ref_ce = -0.5 * sum(float(a[i, k]) * math.log(float(b[i, k])) + float(b[i, k]) * math.log(float(a[i, k]))
                        for i in range(7) for k in range(5)) / 7
    assert abs(float(pair_cross_entropy(a, b)) - ref_ce) < 1e-12
    assert abs(float(pair_cross_entropy(a, a)) - float(sample_entropy(a))) < 1e-12  # agreeing views: H(t)


def _fd_check(fn, t):
    """Gradient of a scalar function of soft labels against central finite differences."""
    (grad,) = torch.autograd.grad(fn(t), t)
    v = torch.randn(t.shape, generator=torch.Generator().manual_seed(3), dtype=t.dtype)
    h = 1e-6
    with torch.no_grad():
        fd = (fn(t + h * v) - fn(t - h * v)) / (2 * h)
    assert torch.allclose((grad * v).sum(), fd, rtol=1e-6, atol=1e-10)


def test_regulariser_gradients_match_finite_differences():
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    other = _soft(1).detach()
    _fd_check(lambda t: block_usage_regulariser(t, y), _soft())
    _fd_check(sample_entropy, _soft())
    _fd_check(lambda t: pair_cross_entropy(t, other), _soft())


def double_backward(f, g, x, y, labels, pair, usage, sharp, cons, scale, lam):
    """The whole objective written the direct way: differentiate through the look-ahead with create_graph."""
    from torch.func import functional_call

    from auxgen.losses import entropy_regulariser

    params = dict(f.named_parameters())
    buffers = {n: b.clone() for n, b in f.named_buffers()}
    pri, aux = functional_call(f, (params, buffers), (x,))
    grads = torch.autograd.grad(focal_loss(pri, y, GAMMA) + focal_loss(aux, labels, GAMMA), list(params.values()),
                                create_graph=True)
    fast = {n: p - ALPHA * gr for (n, p), gr in zip(params.items(), grads, strict=True)}
    obj = scale * focal_loss(functional_call(f, (fast, buffers), (x,))[0], y, GAMMA)
    obj = obj + lam * (entropy_regulariser(labels) if usage == "batch" else block_usage_regulariser(labels, y))
    obj = obj + sharp * sample_entropy(labels) + cons * pair_cross_entropy(labels, pair)
    return torch.autograd.grad(obj, list(g.parameters()))


def test_every_objective_variant_matches_double_backward():
    variants = [("batch", 0.0, 0.0, 1.0, 0.2), ("block", 1.0, 0.0, 1.0, 2.0), ("block", 1.0, 1.0, 1 / ALPHA, 2.0),
                ("batch", 0.5, 2.0, 0.0, 0.2)]
    for usage, sharp, cons, scale, lam in variants:
        _, f, g, x, y = _setup(1)
        x2 = x.roll(1, dims=3)  # another view of the same images
        norm = "alpha" if scale == 1 / ALPHA else "none"  # meta_scale 1/alpha is --meta-norm alpha
        obj = paper_objective(ALPHA, GAMMA, entropy_weight=lam, usage_entropy=usage, sharpness_weight=sharp,
                        meta_weight=0.0 if scale == 0 else 1.0, meta_norm=norm, consistency_weight=cons)
        ours = meta_gradient(f, list(g.parameters()), x, y, g(x, y), obj, pair=g(x2, y)).gen_grads
        ref = double_backward(f, g, x, y, g(x, y), g(x2, y), usage, sharp, cons, scale, lam)
        for a, b in zip(ours, ref, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13), (usage, sharp, cons, scale)


def test_preset_paper_is_the_published_settings():
    cfg = resolve_config(None, {"preset": "paper"})
    published = dict(backbone="vgg16", epochs=200, batch_size=100, lr=0.01, momentum=0.0, weight_decay=0.0,
                     gen_lr=1e-3, gen_weight_decay=5e-4, gen_decay="l2", gamma=2.0, entropy_weight=0.2,
                     usage_entropy="batch", sharpness_weight=0.0, consistency_weight=0.0, meta_weight=1.0,
                     meta_norm="none", gen_optimizer="sgd", lr_schedule="step", meta_order=2, meta_split=0.0,
                     schedule="alternate", augment="auto", flip=True)
    assert {k: getattr(cfg, k) for k in published} == published
    text = resolve_config(None, {"preset": "paper-text"})
    assert (text.gen_lr, text.gen_decay, text.meta_split, text.schedule) == (1e-5, "l1", 0.1, "interleave")
    assert resolve_config(None, {"preset": "paper", "epochs": 3}).epochs == 3  # flags override a preset
    assert set(PRESETS) == {"paper", "paper-text"}


def test_cosine_schedule_warms_up_then_decays():
    lrs = [lr_at(1.0, e, 10, "cosine", 2) for e in range(1, 11)]
    assert lrs[0] < lrs[1] < lrs[2] == 1.0 and all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[-1] > 0


def test_kmeans_labels_inside_their_blocks_and_reproducible():
    from auxgen.trainer import kmeans_targets

    cfg = tiny_config(method="kmeans", primary_groups=5, epochs=1)
    run = setup(cfg)
    a, b = kmeans_targets(cfg, run.data, run.hier), kmeans_targets(cfg, run.data, run.hier)
    assert a.kind == "hard" and torch.equal(a.labels, b.labels)
    assert torch.equal(run.hier.block_id()[a.labels], run.data.train.labels)
    assert len(a.labels.unique()) == run.hier.num_aux  # every cluster has members


def test_example_configs_are_the_paper_settings():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples" / "configs"
    files = sorted(root.glob("*.toml"))
    assert files
    for f in files:
        cfg = resolve_config(f, {})
        assert cfg.preset == "paper"
        assert (cfg.lr, cfg.momentum, cfg.epochs, cfg.schedule) == (0.01, 0.0, 200, "alternate")
