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
from auxgen.maxl import Nets, Objective, fused_iteration, maxl_iteration, meta_step, train_step
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.runtime import tune_cpu_allocator


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
            width: int | None = None, gen_width: int | None = None) -> dict[str, float]:
    """Median seconds of a single-task step, an exact MAXL iteration and a first-order one."""
    torch.manual_seed(0)
    hier = Hierarchy((5,) * 20)
    model = MultiTaskNet(backbone, 3, hier.num_primary, hier.num_aux, width).to(device).train()
    gen = LabelGenerator(backbone, 3, hier, gen_width or width).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen_opt = torch.optim.SGD(gen.parameters(), lr=1e-3, weight_decay=5e-4)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, hier.num_primary, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    nets, objective = Nets(model, gen, opt, gen_opt), Objective(0.01, 2.0, entropy_weight=0.2)
    out = {"single": _median_time(lambda: train_step(model, opt, x, y, None, objective), repeats, warmup, sync)}
    for order, step, name in ((2, maxl_iteration, "maxl_exact"), (1, maxl_iteration, "maxl_first_order"),
                              (2, fused_iteration, "maxl_fused")):
        obj = dataclasses.replace(objective, meta_order=order)
        out[name] = _median_time(lambda s=step, o=obj: s(nets, x, y, o), repeats, warmup, sync)
    # the parts of an exact iteration: where its time goes
    out["generator_forward"] = _median_time(lambda: gen(x, y), repeats, warmup, sync)

    def meta_only() -> None:
        meta_step(nets, x, y, gen(x, y), objective)

    out["meta_step_with_forward"] = _median_time(meta_only, repeats, warmup, sync)
    return out


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
    args = ap.parse_args()
    tuned = not args.no_tune_allocator and tune_cpu_allocator()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, {args.size}x{args.size} RGB, median of {args.repeats}, allocator tuned: {tuned}, "
          f"generator width: {args.gen_width or 'as the backbone'}")
    print(f"{'backbone':<10}{'single (s)':>12}{'exact (s)':>12}{'exact/single':>14}{'1st-order (s)':>15}"
          f"{'1st/single':>12}{'fused (s)':>12}{'fused/single':>14}")
    for name in args.models.split(","):
        t = measure(name, args.batch, args.size, args.repeats, args.warmup, device, gen_width=args.gen_width)
        print(f"{name:<10}{t['single']:>12.4f}{t['maxl_exact']:>12.4f}{t['maxl_exact'] / t['single']:>14.2f}"
              f"{t['maxl_first_order']:>15.4f}{t['maxl_first_order'] / t['single']:>12.2f}"
              f"{t['maxl_fused']:>12.4f}{t['maxl_fused'] / t['single']:>14.2f}", flush=True)
        g, m = t["generator_forward"], t["meta_step_with_forward"] - t["generator_forward"]
        print(f"{'':<10}parts of the exact iteration (s): generator forward {g:.4f} ({g / t['single']:.2f}x), "
              f"training step ~{t['single']:.4f}, meta step {m:.4f} ({m / t['single']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
