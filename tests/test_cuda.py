"""CUDA: the exact meta-gradient, the look-ahead, bf16, resume, export/verify and host syncs on a GPU.

Every test here carries the `cuda` marker and is skipped where CUDA is absent (conftest.py).
AUXGEN_CUDA_TESTS_DEVICE=cpu rehearses the same code on the CPU (what can be checked there:
no GPU figure comes of it). With AUXGEN_CUDA_FIGURES=FILE each test appends the figures it
measured (relative errors, differences) to FILE as JSON lines: benchmarks/device_check.py
collects them into its table.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

# read by cuBLAS when its first handle is made: needed for deterministic matrix products (resume test)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_config  # noqa: E402
from test_maxl import ALPHA, GAMMA, LAM, double_backward_meta_gradient  # noqa: E402

from auxgen.hierarchy import Hierarchy  # noqa: E402
from auxgen.maxl import Nets, implicit_step, maxl_iteration, meta_gradient, meta_step  # noqa: E402
from auxgen.models import LabelGenerator, MultiTaskNet  # noqa: E402
from auxgen.runtime import Precision  # noqa: E402
from auxgen.steps import paper_objective as Objective  # noqa: E402

pytestmark = pytest.mark.cuda

REHEARSAL = os.environ.get("AUXGEN_CUDA_TESTS_DEVICE") == "cpu"
DEV = torch.device("cpu" if REHEARSAL else "cuda")
# tolerances: stated before a GPU was ever lent; the figures measured on one are recorded (AUXGEN_CUDA_FIGURES)
META_GRAD_RTOL_FP32 = 1e-4    # float32 on CUDA, TF32 off, against float64 on the CPU
META_GRAD_RTOL_TF32 = 2e-2    # float32 with PyTorch's default TF32 convolutions
META_GRAD_RTOL_FP64 = 1e-9    # float64 on CUDA against float64 on the CPU
BF16_LOSS_RTOL = 0.1          # mean primary loss over 300 steps, bf16 against float32
RESUME_RTOL = 1e-4            # resumed against uninterrupted when some op had no deterministic kernel


def record(name: str, **figures) -> None:
    """Write a test's measured figures where device_check.py collects them (and to stdout, for -s)."""
    line = {"test": name, "device": str(DEV), **figures}
    print(json.dumps(line))
    path = os.environ.get("AUXGEN_CUDA_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


@pytest.fixture
def float32_exact():
    """TF32 off for matrix products and convolutions, restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _problem(seed: int = 0, dtype=torch.float64, width: int = 8, batch: int = 16, size: int = 16):
    """A small RGB problem with batch norm: multi-task net, generator, a batch (on the CPU)."""
    torch.manual_seed(seed)
    h = Hierarchy((2, 3, 2, 3))
    f = MultiTaskNet("cnn", 3, h.num_primary, h.num_aux, width=width).to(dtype).train()
    g = LabelGenerator("cnn", 3, h, width=width).to(dtype).train()
    x = torch.rand(batch, 3, size, size, dtype=dtype) * 255
    y = torch.arange(batch) % h.num_primary
    return h, f, g, x, y


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.detach().double().cpu().flatten() for t in ts])


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float((a - b).norm() / b.norm())


def _meta_grad_on(dev, dtype, f, g, x, y):
    fc, gc = copy.deepcopy(f).to(dev, dtype), copy.deepcopy(g).to(dev, dtype)
    xc, yc = x.to(dev, dtype), y.to(dev)
    obj = Objective(ALPHA, GAMMA, meta_order=2, entropy_weight=LAM)
    return meta_gradient(fc, list(gc.parameters()), xc, yc, gc(xc, yc), obj).gen_grads


def test_exact_meta_gradient_on_cuda_matches_float64_on_cpu(float32_exact):
    _, f, g, x, y = _problem()
    ref = double_backward_meta_gradient(f, list(g.parameters()), x, y, g(x, y))  # float64, CPU, double backward
    fp64 = _rel(_meta_grad_on(DEV, torch.float64, f, g, x, y), ref)
    fp32 = _rel(_meta_grad_on(DEV, torch.float32, f, g, x, y), ref)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    tf32 = _rel(_meta_grad_on(DEV, torch.float32, f, g, x, y), ref)
    record("meta_gradient", rel_err_fp64=fp64, rel_err_fp32=fp32, rel_err_fp32_default_tf32=tf32)
    assert fp64 < META_GRAD_RTOL_FP64, fp64
    assert fp32 < META_GRAD_RTOL_FP32, fp32
    assert tf32 < META_GRAD_RTOL_TF32, tf32


def test_lookahead_leaves_weights_and_running_stats_untouched_on_cuda():
    _, f, g, x, y = _problem(dtype=torch.float32)
    f, g, x, y = f.to(DEV), g.to(DEV), x.to(DEV), y.to(DEV)
    f(x)  # running statistics away from their initial values, so a reset would show too
    before = copy.deepcopy(f.state_dict())
    nets = Nets(f, g, None, torch.optim.SGD(g.parameters(), lr=0.1))
    for order in (2, 1):
        meta_step(nets, x, y, g(x, y), Objective(ALPHA, GAMMA, meta_order=order, entropy_weight=LAM))
    implicit_step(nets, x, y, g(x, y), Objective(ALPHA, GAMMA, entropy_weight=LAM, neumann_steps=2), (x, y))
    for k, v in f.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights, running_mean/var, num_batches_tracked
    assert all(p.grad is None for p in f.parameters())


def _learnable_batches(n: int, batch: int, h: Hierarchy, seed: int):
    """Batches whose primary class shows in the image (a brightness level per class), so losses fall."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        y = torch.randint(0, h.num_primary, (batch,), generator=gen)
        level = (y.float() + 0.5) / h.num_primary * 200
        x = (level[:, None, None, None] + 120 * torch.rand(batch, 3, 16, 16, generator=gen)).clamp(0, 255)
        yield x.to(DEV), y.to(DEV)


def _train_maxl(precision: Precision, steps: int) -> list[float]:
    h, f, g, _, _ = _problem(seed=1, dtype=torch.float32, width=16)
    f, g = f.to(DEV), g.to(DEV)
    nets = Nets(f, g, torch.optim.SGD(f.parameters(), lr=0.05, momentum=0.9),
                torch.optim.Adam(g.parameters(), lr=1e-3))
    obj = Objective(0.05, GAMMA, meta_order=2, entropy_weight=LAM)
    losses = []
    for x, y in _learnable_batches(steps, 32, h, seed=2):
        with precision.context():  # forward-mode AD of the exact meta-gradient under autocast included
            res = maxl_iteration(nets, x, y, obj)
        losses.append(torch.stack([res["loss_pri"], res["loss_aux"], res["meta_after"]]).float())
    return torch.stack(losses).cpu().tolist()  # one sync, at the end


def test_bf16_trains_without_nan_and_stays_near_float32():
    steps = 60 if REHEARSAL else 300
    fp32 = torch.tensor(_train_maxl(Precision.of("fp32", DEV), steps))
    bf16 = torch.tensor(_train_maxl(Precision.of("bf16", DEV), steps))
    assert torch.isfinite(fp32).all() and torch.isfinite(bf16).all()
    tail = max(steps // 6, 10)
    a, b = fp32[:, 0].mean(), bf16[:, 0].mean()  # the learning curve's mean: tail losses are too small to compare
    rel = float((a - b).abs() / a)
    record("bf16", steps=steps, fp32_loss_pri=float(a), bf16_loss_pri=float(b), rel_diff=rel,
           tail_fp32=float(fp32[-tail:, 0].mean()), tail_bf16=float(bf16[-tail:, 0].mean()),
           meta_after_rel_diff=float((fp32[:, 2].mean() - bf16[:, 2].mean()).abs() / fp32[:, 2].mean()))
    assert fp32[-tail:, 0].mean() < fp32[:tail, 0].mean()  # the task is learnt at all
    assert rel < BF16_LOSS_RTOL, (float(a), float(b))


def test_shape_input_is_float32_under_bf16_and_matches_the_cpu():
    """--gen-input shape (the RGB default): the shape map on the device, under bf16 autocast, is the CPU's float32
    map, so a generator trained in bf16 and the labels export computes in float32 see the same input."""
    from auxgen.models import ShapeInput

    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    ref = ShapeInput(3)(x)
    with Precision.of("bf16", DEV).context():
        out = ShapeInput(3)(x.to(DEV))
    rel = float((out.float().cpu() - ref).norm() / ref.norm())
    record("shape_input_bf16", rel_diff_vs_cpu=rel)
    assert out.dtype == torch.float32 and rel < 1e-4


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms (warn-only: an op without a deterministic kernel warns), no cuDNN tuning."""
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])
    torch.backends.cudnn.benchmark = old[2]


def _metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_on_cuda(tmp_path, deterministic):
    from auxgen.checkpoint import load_checkpoint
    from auxgen.trainer import train

    cfg = tiny_config(epochs=3, device=DEV.type)

    def stop_after_first(m):
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, tmp_path / "full", show=False)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "cut", show=False, on_epoch_end=stop_after_first)
        train(cfg, tmp_path / "cut", resume=True, show=False)
    nondeterministic = sorted({str(w.message).split(".")[0] for w in caught if "deterministic" in str(w.message)})
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    worst = max(float(((v.double() - b[part][k].double()).abs() / v.double().abs().clamp_min(1e-6)).max())
                for part in ("model", "generator") for k, v in a[part].items() if v.is_floating_point())
    ma, mb = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    record("resume", bit_exact=ma == mb and worst == 0.0, max_rel_weight_diff=worst,
           ops_without_deterministic_kernel=nondeterministic)
    if not nondeterministic:
        assert ma == mb
        assert worst == 0.0
    else:
        assert worst < RESUME_RTOL, (worst, nondeterministic)
        for x, y in zip(ma, mb, strict=True):
            assert abs(x["train_loss_pri"] - y["train_loss_pri"]) <= RESUME_RTOL * abs(x["train_loss_pri"])


def test_export_and_verify_of_a_cuda_trained_run_agree(tmp_path):
    from auxgen.export import export_labels
    from auxgen.trainer import train
    from auxgen.verify import verify

    run = tmp_path / "run"
    train(tiny_config(epochs=2, device=DEV.type), run, show=False)
    export_labels(run, tmp_path / "labels.h5", "hdf5", device=DEV.type)
    export_labels(run, tmp_path / "shards", "wds", images=False, device=DEV.type)
    figures = {}
    for name in ("labels.h5", "shards"):
        report = verify(run, tmp_path / name, sample=100_000, device=DEV.type)
        assert report.passed, report.to_dict()
        rd = next(c for c in report.checks if c.name == "rederivation")
        figures[name] = rd.figures.get("max_abs_diff")
    # the CUDA export re-derived on the CPU: within the format's float32 tolerance
    cpu = verify(run, tmp_path / "labels.h5", sample=100_000, device="cpu")
    figures["cpu_rederivation_of_cuda_export"] = next(c for c in cpu.checks if c.name == "rederivation").figures.get(
        "max_abs_diff")
    record("export_verify", max_abs_diff=figures, cpu_verify_passed=cpu.passed)
    assert cpu.passed, cpu.to_dict()


def _epoch(method: str = "maxl", **kw):
    from auxgen.trainer import Tally, _start_epoch, pick_step, setup

    run = setup(tiny_config(device=DEV.type, method=method, **kw))
    rngs = {"data": torch.Generator().manual_seed(2), "aug": torch.Generator().manual_seed(3)}
    ep, _ = _start_epoch(run, 1, rngs)
    return run, ep, pick_step(run.cfg, run.targets), Tally(run)


REGIMES = {"single": dict(method="single"), "maxl": {}, "first_order": dict(meta_order=1),
           "fused": dict(fused_lookahead=True), "implicit": dict(hypergradient="implicit"),
           "meta_every": dict(meta_every=2)}


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("part", ["steps", "loop"])
def test_no_host_sync_inside_the_step_loop(regime, part):
    """Between the trainer's SYNC_EVERY points an epoch's steps never wait for the device.

    part=steps: the step functions and the device-side tally, on batches drawn beforehand;
    part=loop: the whole loop body of trainer._train_epoch, the batch source included.
    """
    from auxgen.trainer import SYNC_EVERY

    kw = dict(REGIMES[regime])
    run, ep, step_fn, tally = _epoch(kw.pop("method", "maxl"), **kw)
    B = run.cfg.batch_size
    order = run.train_idx[torch.randperm(len(run.train_idx), generator=torch.Generator().manual_seed(0))]
    rows = [order[i * B:(i + 1) * B] for i in range(min(SYNC_EVERY, len(order) // B))]
    assert len(rows) >= 3
    with run.precision.context():  # first step: one-off work (cuDNN plans, the JVP decompositions) may sync
        tally.add(step_fn(ep, 0, rows[0]))
    if part == "steps":
        drawn = {id(r): ep.batches(r) for r in rows[1:]}
        batches = ep.batches
        ep.batches = lambda r: drawn[id(r)]
        ep.batches.view, ep.batches.pair_view = batches.view, batches.pair_view
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")  # each sync warns, attributed to the Python line that made it
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i, r in enumerate(rows[1:], start=1):
                with run.precision.context():
                    res = step_fn(ep, i, r)
                tally.add(res)
    finally:
        if DEV.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})
    record(f"host_sync[{part}-{regime}]", steps=len(rows) - 1, sync_sites=sites)
    assert not sites, f"host syncs inside the step loop at {sites}"
    assert torch.isfinite(tally.sums["pri"])
