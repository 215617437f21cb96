"""Cost of a MAXL iteration relative to a single-task step, measured side by side in one process.

    python benchmarks/step_cost.py                 # vgg16 and cnn, batch 100, 32x32 RGB
    python benchmarks/step_cost.py --repeats 9 --models cnn

For each backbone it times (median of --repeats after --warmup) the three things the trainer
does per batch: a single-task step (primary head only), an exact MAXL iteration (training step
+ second-order meta step, auxgen.maxl.maxl_iteration), a first-order iteration and an exact
fused iteration (--fused-lookahead), and prints each as a ratio to the single-task step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from auxgen.hierarchy import Hierarchy
from auxgen.maxl import Nets, fused_iteration, maxl_iteration, meta_step, train_step
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.runtime import tune_cpu_allocator
from auxgen.steps import paper_objective as Objective


def _median_time(fn, repeats: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(backbone: str, batch: int, size: int, repeats: int, warmup: int, device: torch.device,
            width: int | None = None, gen_width: int | None = None, opt_impl: str = "default",
            channels_last: bool = False, compile_nets: bool = False, only: set[str] | None = None
            ) -> dict[str, float]:
    """Median seconds of a single-task step, an exact MAXL iteration and a first-order one.

    opt_impl: default (plain SGD for both, torch's choice of implementation: a for-loop on the CPU), or
    the trainer's default optimisers (SGD with momentum 0.9 and decay 5e-4; an Adam generator) as a
    for-loop, foreach or fused; channels_last: networks and batch in NHWC; compile_nets:
    torch.compile of both networks (the first call's compile time is in the warm-up, not the figures).
    """
    torch.manual_seed(0)
    hier = Hierarchy((5,) * 20)
    model = MultiTaskNet(backbone, 3, hier.num_primary, hier.num_aux, width).to(device).train()
    gen = LabelGenerator(backbone, 3, hier, gen_width or width).to(device).train()
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "loop": {"foreach": False}}
    kw = {} if opt_impl == "default" else {"momentum": 0.9, "weight_decay": 5e-4, **impl[opt_impl]}

    def optimisers() -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        # fresh for each timing: a fused SGD that has momentum buffers for some parameters fails when a
        # parameter without one (the aux head, after single-task steps) first gets a gradient
        gen_opt = (torch.optim.SGD(gen.parameters(), lr=1e-3, weight_decay=5e-4) if opt_impl == "default"
                   else torch.optim.Adam(gen.parameters(), lr=1e-3, weight_decay=5e-4, **impl[opt_impl]))
        return torch.optim.SGD(model.parameters(), lr=0.01, **kw), gen_opt

    if channels_last:
        model.to(memory_format=torch.channels_last)
        gen.to(memory_format=torch.channels_last)
    if compile_nets:
        model.compile()
        gen.compile()
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, hier.num_primary, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    objective = Objective(0.01, 2.0, entropy_weight=0.2)
    opt, _ = optimisers()
    out = {"single": _median_time(lambda: train_step(model, opt, x, y, None, objective), repeats, warmup, sync)}
    nets = Nets(model, gen, *optimisers())
    for order, step, name in ((2, maxl_iteration, "maxl_exact"), (1, maxl_iteration, "maxl_first_order"),
                              (2, fused_iteration, "maxl_fused")):
        if only is not None and name not in only:
            continue
        obj = dataclasses.replace(objective, meta_order=order)
        nets = Nets(model, gen, *optimisers())
        out[name] = _median_time(lambda s=step, o=obj, n=nets: s(n, x, y, o), repeats, warmup, sync)
    if only is not None:
        return out
    # the parts of an exact iteration: where its time goes
    out["generator_forward"] = _median_time(lambda: gen(x, y), repeats, warmup, sync)

    def meta_only() -> None:
        meta_step(nets, x, y, gen(x, y), objective)

    out["meta_step_with_forward"] = _median_time(meta_only, repeats, warmup, sync)
    return out


def compare_opt_impls(backbone: str, batch: int, size: int, repeats: int, impls: list[str],
                      device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds of a single-task step and an exact iteration with the trainer's optimisers in each
    implementation, timed interleaved in one process (so drifting machine load hits all alike)."""
    torch.manual_seed(0)
    hier = Hierarchy((5,) * 20)
    model = MultiTaskNet(backbone, 3, hier.num_primary, hier.num_aux).to(device).train()
    gen = LabelGenerator(backbone, 3, hier).to(device).train()
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, **flags[k]),
                torch.optim.Adam(gen.parameters(), lr=1e-3, weight_decay=5e-4, **flags[k])) for k in impls}
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, hier.num_primary, (batch,), device=device)
    obj = Objective(0.01, 2.0, entropy_weight=0.2)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: {"single": [], "maxl_exact": []} for k in impls}
    for r in range(repeats + 1):  # the first round warms up
        for k, (opt, gen_opt) in opts.items():
            nets, zeros = Nets(model, gen, opt, gen_opt), torch.zeros(batch, hier.num_aux, device=device)
            for name, fn in (("maxl_exact", lambda n=nets: maxl_iteration(n, x, y, obj)),  # aux head trained too:
                             ("single", lambda o=opt, z=zeros: train_step(model, o, x, y, z, obj))):  # every grad set
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if r:
                    times[k][name].append(time.perf_counter() - t0)
    return {k: {n: statistics.median(v) for n, v in t.items()} for k, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,cnn", help="comma-separated backbones")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gen-width", type=int, default=None, help="generator width (default: the backbone's)")
    ap.add_argument("--no-tune-allocator", action="store_true", help="leave glibc's allocator as it is")
    ap.add_argument("--opt-impl", default="default", choices=("default", "loop", "foreach", "fused"),
                    help="loop, foreach, fused: the trainer's optimisers (SGD with momentum, Adam generator)")
    ap.add_argument("--channels-last", action="store_true", help="networks and batch in channels_last (NHWC)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both networks (compile time not counted)")
    ap.add_argument("--only", default=None, help="comma-separated subset: single,maxl_exact,maxl_first_order,"
                    "maxl_fused (default all, and the parts)")
    ap.add_argument("--compare-opt", default=None, help="e.g. loop,fused: interleaved A/B of optimiser implementations")
    args = ap.parse_args()
    if args.compare_opt:
        for name in args.models.split(","):
            res = compare_opt_impls(name, args.batch, args.size, args.repeats, args.compare_opt.split(","),
                                    torch.device(args.device))
            base = res[args.compare_opt.split(",")[0]]
            for k, t in res.items():
                print(f"{name:<8}{k:<9}" + "  ".join(f"{n} {v:.4f} s ({v / base[n]:.3f} of the first)"
                                                     for n, v in t.items()), flush=True)
        return
    tuned = not args.no_tune_allocator and tune_cpu_allocator()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, {args.size}x{args.size} RGB, median of {args.repeats}, allocator tuned: {tuned}, "
          f"generator width: {args.gen_width or 'as the backbone'}")
    print(f"{'backbone':<10}{'single (s)':>12}{'exact (s)':>12}{'exact/single':>14}{'1st-order (s)':>15}"
          f"{'1st/single':>12}{'fused (s)':>12}{'fused/single':>14}")
    only = None if args.only is None else set(args.only.split(","))
    for name in args.models.split(","):
        t = measure(name, args.batch, args.size, args.repeats, args.warmup, device, gen_width=args.gen_width,
                    opt_impl=args.opt_impl, channels_last=args.channels_last, compile_nets=args.compile, only=only)
        if only is not None:
            print(f"{name:<10}" + "  ".join(f"{k} {v:.4f} s ({v / t['single']:.2f}x)" for k, v in t.items()),
                  f"[opt {args.opt_impl}, channels_last {args.channels_last}, compile {args.compile}]", flush=True)
            continue
        print(f"{name:<10}{t['single']:>12.4f}{t['maxl_exact']:>12.4f}{t['maxl_exact'] / t['single']:>14.2f}"
              f"{t['maxl_first_order']:>15.4f}{t['maxl_first_order'] / t['single']:>12.2f}"
              f"{t['maxl_fused']:>12.4f}{t['maxl_fused'] / t['single']:>14.2f}", flush=True)
        g, m = t["generator_forward"], t["meta_step_with_forward"] - t["generator_forward"]
        print(f"{'':<10}parts of the exact iteration (s): generator forward {g:.4f} ({g / t['single']:.2f}x), "
              f"training step ~{t['single']:.4f}, meta step {m:.4f} ({m / t['single']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
