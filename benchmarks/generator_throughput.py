"""Labels per second of the generator in process, as the exported .pt2 program and in onnxruntime, side by side.

    python benchmarks/generator_throughput.py                       # cnn and vgg16 at 32x32, batch 256
    python benchmarks/generator_throughput.py --backbones vgg16 --threads 1 --repeats 9

For each backbone: a generator (default width, 3x32x32 RGB, 20 primary classes, psi 5, K = 100,
batch-norm running statistics randomised so that a training-mode program would be caught) is
written with auxgen's exporter to .pt2 and .onnx, then the three runners label the same batches of
random uint8 images on the CPU, interleaved round by round: the in-process eval-mode generator
under `torch.inference_mode`, the `torch.export.load`ed program, and an onnxruntime CPU session
with the same number of intra-op threads as torch. Reports the median over the rounds (after
warm-up) and the largest |difference| from the in-process labels over `--check` samples.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from auxgen.export.generator_files import load_generator, onnx_session, save_generator
from auxgen.hierarchy import Hierarchy
from auxgen.models import LabelGenerator
from auxgen.runtime import tune_cpu_allocator


def make_generator(backbone: str, psi: tuple[int, ...], seed: int = 0) -> LabelGenerator:
    torch.manual_seed(seed)
    gen = LabelGenerator(backbone, 3, Hierarchy(psi))
    for m in gen.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return gen.eval()


def bench(backbone: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    psi = (5,) * 20
    gen = make_generator(backbone, psi)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, len(psi), (args.batch_size,), generator=g)
    t0 = time.perf_counter()
    for fmt in ("pt2", "onnx"):
        save_generator(gen, work / f"{backbone}.{fmt}", fmt, {"psi": list(psi)}, (x[:8], y[:8]))
    export_s = time.perf_counter() - t0
    program = torch.export.load(str(work / f"{backbone}.pt2")).module()
    session = onnx_session(work / f"{backbone}.onnx", threads=torch.get_num_threads())
    xn, yn = x.numpy(), y.numpy()
    runners = {
        "in-process": lambda: gen(x, y),
        "pt2": lambda: program(x, y),
        "onnxruntime": lambda: session.run(None, {"images": xn, "primary": yn}),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for r in range(args.warmup + args.repeats):
            for name, fn in runners.items():
                t = time.perf_counter()
                fn()
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t)
    # the tolerance: largest difference from the in-process labels over --check fresh samples, batch by batch
    gc = torch.Generator().manual_seed(2)
    xc = torch.randint(0, 256, (args.check, 3, 32, 32), dtype=torch.uint8, generator=gc)
    yc = torch.randint(0, len(psi), (args.check,), generator=gc)
    diffs = {}
    with torch.inference_mode():
        for fmt in ("pt2", "onnx"):
            run, _ = load_generator(work / f"{backbone}.{fmt}", fmt)
            worst = 0.0
            for s in range(0, args.check, args.batch_size):
                xs, ys = xc[s:s + args.batch_size], yc[s:s + args.batch_size]
                worst = max(worst, float((run(xs, ys) - gen(xs, ys)).abs().max()))
            diffs[fmt] = worst
    rates = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    return {"backbone": backbone, "rates": rates, "diffs": diffs, "export_s": export_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="cnn,vgg16")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--check", type=int, default=512, help="samples compared with the in-process labels")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and onnxruntime "
                                                              "[default: torch's]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as the auxgen command does
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, median of {args.repeats} after {args.warmup} warm-up rounds\n")
    print("| generator (32x32, K = 100) | in-process (labels/s) | .pt2 program | onnxruntime | "
          "pt2 max diff | onnx max diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="auxgen-genbench-") as tmp:
        for backbone in args.backbones.split(","):
            r = bench(backbone, args, Path(tmp))
            rt, d = r["rates"], r["diffs"]
            print(f"| {backbone} | {rt['in-process']:,.0f} | {rt['pt2']:,.0f} ({rt['pt2'] / rt['in-process']:.2f}x) | "
                  f"{rt['onnxruntime']:,.0f} ({rt['onnxruntime'] / rt['in-process']:.2f}x) | {d['pt2']:.2g} | "
                  f"{d['onnx']:.2g} |", flush=True)


if __name__ == "__main__":
    main()
