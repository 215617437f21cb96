"""The objective's newer terms and schedules against independent computations (float64):
the invariance prior (pair mutual information), the auxiliary-loss weight, the L1 decay and
amortised meta steps."""

import copy
import json
import math
from collections.abc import Callable

import pytest
import torch
from conftest import tiny_config
from test_maxl import ALPHA, GAMMA, _setup
from test_objectives import _fd_check, _soft
from torch.func import functional_call

from auxgen.losses import entropy_regulariser, focal_loss, pair_mutual_information
from auxgen.maxl import Nets, Objective, meta_gradient, meta_step
from auxgen.models import ShapeInput
from auxgen.steps import objective_for, paper_objective
from auxgen.trainer import setup, train


def test_pair_mutual_information_is_the_written_out_sum():
    a, b = _soft(0, n=6, k=4).detach(), _soft(1, n=6, k=4).detach()
    joint = [[sum(float(a[i, r] * b[i, c] + a[i, c] * b[i, r]) / 2 for i in range(6)) / 6 for c in range(4)]
             for r in range(4)]
    rows = [sum(r) for r in joint]
    ref = sum(p * math.log(p / (rows[r] * rows[c])) for r, line in enumerate(joint) for c, p in enumerate(line))
    assert abs(float(pair_mutual_information(a, b)) - ref) < 1e-12
    one_hot = torch.eye(4, dtype=torch.float64)[[0, 1, 2, 3, 0, 1]]
    # identical confident views: I = H(class) = entropy of (1/3, 1/3, 1/6, 1/6)
    h = -sum(p * math.log(p) for p in (1 / 3, 1 / 3, 1 / 6, 1 / 6))
    assert abs(float(pair_mutual_information(one_hot, one_hot)) - h) < 1e-9
    other = _soft(2, n=6, k=4).detach()
    _fd_check(lambda t: pair_mutual_information(t, other), _soft(0, n=6, k=4))


def _double_backward(f, g, x, y, labels, obj, pair):
    """The objective written the direct way, with aux_weight, invariance and L1 terms."""
    params = dict(f.named_parameters())
    buffers = {n: b.clone() for n, b in f.named_buffers()}
    pri, aux = functional_call(f, (params, buffers), (x,))
    inner = focal_loss(pri, y, GAMMA) + obj.aux_weight * focal_loss(aux, labels, GAMMA)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {n: p - ALPHA * gr for (n, p), gr in zip(params.items(), grads, strict=True)}
    total = obj.meta_weight * focal_loss(functional_call(f, (fast, buffers), (x,))[0], y, GAMMA)
    total = total + obj.entropy_weight * entropy_regulariser(labels)
    total = total - obj.invariance_weight * pair_mutual_information(labels, pair)
    total = total + obj.gen_l1 * sum(p.abs().sum() for p in g.parameters())
    return torch.autograd.grad(total, list(g.parameters()))


def test_aux_weight_invariance_and_l1_terms_match_double_backward():
    for aux_weight, inv, l1 in ((0.25, 0.0, 0.0), (1.0, 0.7, 0.0), (0.5, 0.3, 1e-3)):
        _, f, g, x, y = _setup(2)
        x2 = x.roll(1, dims=2)
        obj = paper_objective(ALPHA, GAMMA, entropy_weight=0.2, aux_weight=aux_weight, invariance_weight=inv, gen_l1=l1)
        ours = meta_gradient(f, list(g.parameters()), x, y, g(x, y), obj, pair=g(x2, y)).gen_grads
        ref = _double_backward(f, g, x, y, g(x, y), obj, g(x2, y))
        for a, b in zip(ours, ref, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13), (aux_weight, inv, l1)


def test_l1_term_is_the_sign_decay_of_the_paper_text():
    _, f, g, x, y = _setup(3)
    g2 = copy.deepcopy(g)
    with_l1, without = paper_objective(ALPHA, GAMMA, gen_l1=0.01), paper_objective(ALPHA, GAMMA)
    meta_step(Nets(f, g, None, torch.optim.SGD(g.parameters(), lr=1.0)), x, y, g(x, y), with_l1)
    before = [p.detach().clone() for p in g2.parameters()]
    meta_step(Nets(f, g2, None, torch.optim.SGD(g2.parameters(), lr=1.0)), x, y, g2(x, y), without)
    for p, q, p0 in zip(g.parameters(), g2.parameters(), before, strict=True):
        assert torch.allclose(q - p, 0.01 * torch.sign(p0), atol=1e-12)


def test_objective_takes_every_same_named_config_field():
    cfg = tiny_config(entropy_weight=0.7, aux_weight=0.3, invariance_weight=0.4, meta_order=1, gen_decay="l1",
                      gen_weight_decay=2e-4, usage_entropy="batch")
    obj = objective_for(cfg, 0.05)
    assert (obj.alpha, obj.entropy_weight, obj.aux_weight, obj.invariance_weight, obj.meta_order, obj.gen_l1,
            obj.usage_entropy) == (0.05, 0.7, 0.3, 0.4, 1, 2e-4, "batch")
    assert objective_for(tiny_config(gen_decay="l2"), 0.05).gen_l1 == 0.0  # l2 lives in the optimiser


def test_meta_every_moves_the_generator_only_on_meta_steps():
    # one epoch of digits at batch 64 is 22 steps: with N above that, only step 0 is a meta step
    cfg = tiny_config(epochs=1, meta_every=1000)
    s_rare = train(cfg, None, show=False, return_run=True)
    s_every = train(tiny_config(epochs=1), None, show=False, return_run=True)
    rare = torch.cat([p.flatten() for p in s_rare["run"].generator.parameters()])
    every = torch.cat([p.flatten() for p in s_every["run"].generator.parameters()])
    torch.manual_seed(cfg.seed)
    init = setup(cfg).generator
    start = torch.cat([p.flatten() for p in init.parameters()])
    assert not torch.equal(rare, start)                   # the one meta step moved it
    assert (rare - start).norm() < (every - start).norm()  # 1 step against 22
    assert s_rare["history"] and s_rare["epochs"] == 1


def test_implicit_hypergradient_regime_trains_on_held_out_batches():
    cfg = tiny_config(epochs=1, hypergradient="implicit", meta_split=0.2, meta_every=5)
    s = train(cfg, None, show=False, return_run=True)
    torch.manual_seed(cfg.seed)
    start = torch.cat([p.flatten() for p in setup(cfg).generator.parameters()])
    moved = torch.cat([p.flatten() for p in s["run"].generator.parameters()])
    assert not torch.equal(start, moved)
    assert math.isfinite(s["final_test_acc"])


def test_colour_jitter_reorders_channels_and_scales_brightness_only():
    from auxgen.data import colour_jitter

    x = torch.tensor([10, 50, 90], dtype=torch.uint8)[None, :, None, None].expand(6, 3, 4, 4).contiguous()
    out = colour_jitter(x, 6, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    again = colour_jitter(x, 6, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # a pure function of the generator's state
    for img in out:
        values = sorted(int(v) for v in img[:, 0, 0])
        gain = values[2] / 90
        assert 0.6 - 1e-6 <= gain <= 1.4 + 1e-6
        assert all(abs(v - round(gain * c)) <= 1 for v, c in zip(values, (10, 50, 90), strict=True))
        assert torch.equal(img, img[:, :1, :1].expand_as(img))  # no pixel moved: colour only
    assert len({tuple(int(v) for v in img[:, 0, 0].argsort()) for img in out}) > 1  # orders differ


def test_config_fields_tagged_objective_are_the_objectives_fields():
    import dataclasses

    from auxgen.config import TrainConfig, objective_fields

    shared = {f.name for f in dataclasses.fields(Objective)} & {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(objective_fields()) == shared


def test_runs_saved_with_the_bf16_flag_still_load():
    from auxgen.config import TrainConfig

    assert TrainConfig.from_dict({"bf16": True}).precision == "bf16"
    assert TrainConfig.from_dict({"bf16": False}).validate().precision == "fp32"


def test_no_meta_signal_means_no_look_ahead_and_no_meta_loss():
    cfg = tiny_config(epochs=1, meta_weight=0.0)
    s = train(cfg, None, show=False, return_run=True)
    torch.manual_seed(cfg.seed)
    start = torch.cat([p.flatten() for p in setup(cfg).generator.parameters()])
    assert not torch.equal(start, torch.cat([p.flatten() for p in s["run"].generator.parameters()]))
    _, f, g, x, y = _setup(4)
    f.requires_grad_(False)  # a look-ahead would need theta1's gradients: none can be taken here
    nets = Nets(f, g, None, torch.optim.SGD(g.parameters(), lr=0.1))
    assert meta_step(nets, x, y, g(x, y), paper_objective(ALPHA, GAMMA, meta_weight=0.0, entropy_weight=0.2)) is None


def test_same_class_neighbours_are_the_brute_force_nearest():
    from auxgen.data import same_class_neighbours

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (30,), generator=g)
    labels[29] = 3  # a class of one: it can only lend itself
    rows = torch.arange(30)[torch.arange(30) != 5]  # row 5 is not the run's to see
    nb = same_class_neighbours(images, labels, rows, 3, chunk=7)
    t = images.float().flatten(1)
    t = t - t.mean(1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    for i in rows.tolist():
        if i == 29:
            assert nb[i].tolist() == [29, 29, 29]
            continue
        others = [j for j in rows.tolist() if j != i and labels[j] == labels[i]]
        best = sorted(others, key=lambda j: -float(t[i] @ t[j]))[:3]
        assert nb[i].tolist() == best
    assert nb[5].tolist() == [-1, -1, -1]


def _two_colour(mask: torch.Tensor, ink: tuple, paper: tuple) -> torch.Tensor:
    """A [3, H, W] uint8 image: `ink` where mask, `paper` elsewhere."""
    ink_t, paper_t = (torch.tensor(c, dtype=torch.float32)[:, None, None] for c in (ink, paper))
    return torch.where(mask[None], ink_t, paper_t).round().to(torch.uint8)


def test_shape_thumbnails_ignore_the_colours_a_shape_is_drawn_in():
    from auxgen.data import thumbnails

    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    disc = (yy - 14) ** 2 + (xx - 17) ** 2 < 60
    bar = (xx > 8) & (xx < 13)
    images = torch.stack([_two_colour(disc, (230, 40, 40), (10, 20, 60)),     # red disc on dark blue
                          _two_colour(disc, (20, 20, 140), (240, 230, 90)),  # dark disc on bright yellow
                          _two_colour(bar, (230, 40, 40), (10, 20, 60))])    # a bar in the first disc's colours
    pix, shape = thumbnails(images), thumbnails(images, "shape")
    assert pix.shape == (3, 192) and shape.shape == (3, 64)
    assert torch.allclose(shape.norm(dim=1), torch.ones(3))
    # by pixels, the disc is nearer the bar of its own colours than the same disc in others; by shape, not
    assert float(pix[0] @ pix[2]) > float(pix[0] @ pix[1])
    assert float(shape[0] @ shape[1]) > 0.999 > float(shape[0] @ shape[2])
    grey = images[:, :1]  # one channel: shape is pixels
    assert torch.equal(thumbnails(grey), thumbnails(grey, "shape"))


def test_shape_neighbours_find_the_same_shape_in_other_colours():
    from auxgen.data import same_class_neighbours

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    masks = [(yy - 8) ** 2 + (xx - 8) ** 2 < 20, (xx > 5) & (xx < 10)]
    shapes = torch.arange(40) % 2  # two shapes in one primary class, each in random colours
    images = torch.stack([_two_colour(masks[int(k)], tuple(torch.randint(0, 256, (3,), generator=g).tolist()),
                                      tuple(torch.randint(0, 256, (3,), generator=g).tolist())) for k in shapes])
    labels, rows = torch.zeros(40, dtype=torch.long), torch.arange(40)
    by_shape = same_class_neighbours(images, labels, rows, 3, match="shape")
    by_pixels = same_class_neighbours(images, labels, rows, 3)
    assert bool((shapes[by_shape] == shapes[:, None]).all())
    assert float((shapes[by_pixels] == shapes[:, None]).float().mean()) < 1.0


def _drawn(mask_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: int, x0: int, scale: float,
           ink: tuple, paper: tuple, size: int = 32) -> torch.Tensor:
    """A shape given in unit coordinates, drawn at (y0, x0) at `scale` pixels per unit, in two colours."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return _two_colour(mask_of((yy - y0) / scale, (xx - x0) / scale), ink, paper)


def _ring(y, x):
    return ((y ** 2 + x ** 2) < 1) & ((y ** 2 + x ** 2) > 0.36)


def _cross(y, x):
    return ((y.abs() < 0.25) & (x.abs() < 1)) | ((x.abs() < 0.25) & (y.abs() < 1))


def test_aligned_thumbnails_ignore_where_and_how_large_a_shape_is():
    from auxgen.data import thumbnails

    images = torch.stack([_drawn(_ring, 9, 10, 6, (230, 40, 40), (10, 20, 60)),     # small, top left
                          _drawn(_ring, 19, 18, 11, (20, 20, 140), (240, 230, 90)),  # large, centre, other colours
                          _drawn(_cross, 9, 10, 6, (230, 40, 40), (10, 20, 60))])    # a cross where the first ring is
    shape, aligned = thumbnails(images, "shape"), thumbnails(images, "aligned")
    assert aligned.shape == (3, 64) and torch.allclose(aligned.norm(dim=1), torch.ones(3))
    # by shape, the small ring is nearer the cross at its place than the ring elsewhere; aligned, it is the ring
    assert float(shape[0] @ shape[2]) > float(shape[0] @ shape[1])
    assert float(aligned[0] @ aligned[1]) > 0.9 > float(aligned[0] @ aligned[2])
    # moved by whole pixels, the same drawing gives the same aligned thumbnail, up to resampling
    moved = _drawn(_ring, 15, 21, 6, (230, 40, 40), (10, 20, 60))[None]
    assert float(thumbnails(moved, "aligned")[0] @ aligned[0]) > 0.99


def test_aligned_neighbours_find_the_same_shape_at_other_places_and_sizes():
    from auxgen.data import same_class_neighbours

    g = torch.Generator().manual_seed(0)

    def draw(k: int) -> torch.Tensor:
        r = torch.rand(3, generator=g)
        scale = 5 + 4 * float(r[0])
        y0, x0 = (scale + 1 + float(v) * (30 - 2 * scale) for v in r[1:])
        ink, paper = (tuple(torch.randint(0, 256, (3,), generator=g).tolist()) for _ in range(2))
        return _drawn((_ring, _cross)[k], y0, x0, scale, ink, paper)

    shapes = torch.arange(40) % 2
    images = torch.stack([draw(int(k)) for k in shapes])
    labels, rows = torch.zeros(40, dtype=torch.long), torch.arange(40)
    purity = {m: float((shapes[same_class_neighbours(images, labels, rows, 3, match=m)] == shapes[:, None])
                       .float().mean()) for m in ("shape", "aligned")}
    assert purity["aligned"] == 1.0 > purity["shape"]


def test_thumbnails_in_chunks_are_the_thumbnails_of_the_whole():
    from auxgen.data import THUMBNAIL_MATCHES, thumbnails

    images = torch.randint(0, 256, (11, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for match in THUMBNAIL_MATCHES:
        assert torch.allclose(thumbnails(images, match, chunk=4), thumbnails(images, match), atol=1e-6), match


def test_shape_map_main_axis_is_the_eigen_solvers():
    """shape_map's power iteration (export-friendly) against torch.linalg.eigh's largest eigenvector."""
    from auxgen.data import shape_map

    g = torch.Generator().manual_seed(0)
    # images of two colours with noise, as drawings are: one main colour axis, well above the next
    ink = torch.rand(16, 1, 10, 10, generator=g, dtype=torch.float64) ** 3
    colours = torch.rand(16, 3, 2, 1, 1, generator=g, dtype=torch.float64) * 255
    x = ink * colours[:, :, 0] + (1 - ink) * colours[:, :, 1] + 8 * torch.randn(16, 3, 10, 10, generator=g,
                                                                                  dtype=torch.float64)
    t = x.flatten(2) - x.flatten(2).mean(dim=2, keepdim=True)
    axis = torch.linalg.eigh(t @ t.transpose(1, 2)).eigenvectors[..., -1]
    ref = (axis[:, :, None] * t).sum(1)
    ref = ref * torch.where((ref ** 3).sum(1, keepdim=True) < 0, -1.0, 1.0)
    assert torch.allclose(shape_map(x).flatten(1), ref, atol=1e-6)
    grey = x[:, :1]  # one channel: centred, the ink's side positive
    m = shape_map(grey)[:, 0]
    assert torch.allclose(m.abs(), (grey[:, 0] - grey[:, 0].mean(dim=(1, 2), keepdim=True)).abs())
    assert bool(((m ** 3).sum(dim=(1, 2)) >= 0).all())


def test_a_shape_input_generator_ignores_colour_brightness_and_contrast():
    from auxgen.hierarchy import Hierarchy
    from auxgen.models import LabelGenerator

    torch.manual_seed(0)
    g = LabelGenerator("cnn", 3, Hierarchy((2, 3)), width=4, shape_input=True).eval()
    g.head[-1].weight.data.mul_(50)  # confident labels, so that another input shows
    plain = LabelGenerator("cnn", 3, Hierarchy((2, 3)), width=4).eval()
    plain.load_state_dict(g.state_dict())  # the same weights: only the input differs
    plain.double()
    mask = _ring(*(v / 8 for v in torch.meshgrid(torch.arange(32.) - 15, torch.arange(32.) - 17, indexing="ij")))
    a = _two_colour(mask, (230, 40, 40), (10, 20, 60)).double()
    b = (a[[2, 0, 1]] * 0.5 + 30).double()  # channels reordered, half the contrast, brighter
    y = torch.tensor([1, 1])
    with torch.no_grad():
        ours = g.double()(torch.stack([a, b]), y)
    assert torch.allclose(ours[0], ours[1], atol=1e-9)
    assert (plain.logits(torch.stack([a, b])).diff(dim=0).abs().max() > 0.1)  # the image input sees the change
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training (CUDA's autocast; the CPU's here)
        mapped = g.normalize(torch.stack([a, b]).float())
    assert mapped.dtype == torch.float32 and torch.equal(mapped, g.normalize(torch.stack([a, b]).float()))


def test_auto_inputs_are_shape_maps_and_aligned_neighbours_for_colour_images_and_old_runs_keep_theirs(tmp_path):
    from auxgen.compose import generator_sees_shape, thumbnail_match
    from auxgen.config import TrainConfig, load_config_file

    cfg = TrainConfig()
    assert generator_sees_shape(cfg, 3) and not generator_sees_shape(cfg, 1)
    assert thumbnail_match(cfg, 3) == "aligned" and thumbnail_match(cfg, 1) == "shape"
    assert thumbnail_match(TrainConfig(neighbour_match="features"), 3) == "pixels"  # mined again every epoch
    assert not generator_sees_shape(TrainConfig(gen_input="image"), 3)
    assert generator_sees_shape(TrainConfig(gen_input="shape"), 1)
    old = tmp_path / "config.json"  # a run saved before --gen-input trained its generator on the images
    old.write_text(json.dumps({"train": {"epochs": 3}, "data": {}}))
    assert load_config_file(old)["gen_input"] == "image"
    assert "gen_input" not in load_config_file(_written(tmp_path / "mine.json", {"epochs": 3}))


def test_a_run_saved_before_gen_input_loads_with_the_image_input(tiny_run, tmp_path):
    import shutil

    from auxgen.run import load_run

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["train"]["gen_input"]
    meta["train"]["neighbour_match"] = "shape"  # the value such runs recorded
    (old / "config.json").write_text(json.dumps(meta))
    run = load_run(old)
    assert run.cfg.gen_input == "image" and not isinstance(run.generator.normalize, ShapeInput)
    meta["train"]["gen_input"] = "shape"  # and a run that recorded the shape input gets it back
    (old / "config.json").write_text(json.dumps(meta))
    assert isinstance(load_run(old).generator.normalize, ShapeInput)


def _written(path, data):
    path.write_text(json.dumps(data))
    return path


def test_neighbour_pairs_train():
    cfg = tiny_config(epochs=1, invariance_weight=1.0, pairs="neighbours", pair_colour="on")
    s = train(cfg, None, show=False, return_run=True)
    run = s["run"]
    assert run.neighbours is not None and run.neighbours.shape == (len(run.data.train), cfg.neighbours)
    assert torch.equal(run.train_labels[run.neighbours], run.train_labels[:, None].expand_as(run.neighbours))
    assert math.isfinite(s["final_test_acc"])


def test_feature_neighbours_are_the_networks_nearest_and_resume_alike(tmp_path):
    from auxgen.data import same_class_neighbours
    from auxgen.kmeans import features
    from auxgen.steps import feature_neighbours

    cfg = tiny_config(epochs=2, pairs="neighbours", consistency_weight=1.0, meta_weight=0.0,
                      neighbour_match="features")
    run = train(cfg, tmp_path / "a", show=False, return_run=True)["run"]
    assert run.model.training  # mining looks in eval mode and gives the mode back
    nb = feature_neighbours(run)
    assert run.model.training
    # the run trained on mined neighbours, not on the thumbnails' it starts from
    rows = torch.arange(len(run.train_labels))
    assert not torch.equal(run.neighbours, same_class_neighbours(run.train_images, run.train_labels, rows,
                                                                 cfg.neighbours, match="shape"))
    f = torch.from_numpy(features(run.model, run.data.train, run.device)).float()
    f = torch.nn.functional.normalize(f - f.mean(0), dim=1)
    y = run.train_labels
    for i in range(0, len(y), 97):  # brute force on a sample of rows
        others = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        sims = torch.tensor([float(f[i] @ f[j]) for j in others])
        best = [others[int(j)] for j in sims.topk(cfg.neighbours).indices]
        assert sorted(nb[i].tolist()) == sorted(best)
    # mined from the weights alone: a run stopped after epoch 1 and resumed ends where one uninterrupted run does
    def stop_after_first(m):
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", show=False, on_epoch_end=stop_after_first)
    resumed = train(cfg, tmp_path / "b", resume=True, show=False, return_run=True)["run"]
    for a, b in zip(run.generator.parameters(), resumed.generator.parameters(), strict=True):
        assert torch.equal(a, b)


def test_meta_split_holds_out_rows_of_the_given_subset_only():
    from auxgen.trainer import split_rows

    cfg = tiny_config(meta_split=0.25, batch_size=4)
    subset = torch.arange(10, 50, 2)
    train_rows, meta_rows = split_rows(cfg, 1000, subset)
    assert len(meta_rows) == 5 and len(train_rows) == 15
    assert set(train_rows.tolist()) | set(meta_rows.tolist()) == set(subset.tolist())
    assert not set(train_rows.tolist()) & set(meta_rows.tolist())
    full_train, full_meta = split_rows(cfg, 40)  # without a subset: all rows, as before
    assert sorted(full_train.tolist() + full_meta.tolist()) == list(range(40)) and len(full_meta) == 10


def test_pair_colour_auto_is_on_for_rgb_images_only():
    from auxgen.steps import BatchSource

    run = setup(tiny_config(epochs=1, pair_colour="auto"))  # digits: greyscale
    assert BatchSource(run, torch.Generator()).colour is False
    run.train_images = run.train_images.expand(-1, 3, -1, -1)  # the same images as RGB
    assert BatchSource(run, torch.Generator()).colour is True
    assert BatchSource(setup(tiny_config(epochs=1, pair_colour="on")), torch.Generator()).colour is True
