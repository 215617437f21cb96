"""Export throughput against raw generator inference on the same data and device, in one process.

    python benchmarks/export_throughput.py                        # cnn width 32, 32x32 RGB, 10k+ images
    python benchmarks/export_throughput.py --backbone vgg16 --width 16 --n-test 4000

A tiny MAXL run is trained on a synthetic CIFAR-10-format set (few training images, a large
test split), then for each repeat: raw inference (the generator over both splits in batches,
results kept on the CPU, nothing written) and full exports (HDF5, label-only shards), timed
wall-clock including file creation, hashing and the manifest. Reports the best of the repeats.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from auxgen.config import TrainConfig
from auxgen.export import compute_soft_labels, export_labels
from auxgen.run import load_run, load_run_data
from auxgen.runtime import tune_cpu_allocator
from auxgen.trainer import train


def write_cifar10(root: Path, n_train: int, n_test: int) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="cnn")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-tune-allocator", action="store_true", help="leave glibc's allocator untuned")
    args = ap.parse_args()
    tuned = not args.no_tune_allocator and tune_cpu_allocator()  # as `auxgen export` does

    work = Path(tempfile.mkdtemp(prefix="auxgen-bench-"))
    try:
        write_cifar10(work / "data", args.n_train, args.n_test)
        cfg = TrainConfig(dataset="cifar10", data_root=str(work / "data"), backbone=args.backbone, width=args.width,
                          epochs=1, batch_size=100, device=args.device, psi="5").validate()
        train(cfg, work / "run", show=False)
        run = load_run(work / "run")
        data = load_run_data(run)
        n = len(data.train) + len(data.test)

        def raw() -> float:
            t0 = time.perf_counter()
            for sp in (data.train, data.test):
                compute_soft_labels(run.generator, sp.images, sp.labels, run.device, args.batch_size)
            return n / (time.perf_counter() - t0)

        def export(fmt: str, i: int) -> float:
            out = work / "out" / (f"{i}.h5" if fmt == "hdf5" else f"{i}-wds")
            t0 = time.perf_counter()
            export_labels(work / "run", out, fmt=fmt, images=False, batch_size=args.batch_size, device=args.device)
            return n / (time.perf_counter() - t0)

        results: dict[str, list[float]] = {"raw": [], "hdf5": [], "wds": []}
        raw()  # warm-up
        for i in range(args.repeats):  # interleaved, so drifting machine load hits all three alike
            results["raw"].append(raw())
            results["hdf5"].append(export("hdf5", i))
            results["wds"].append(export("wds", i))
        best = {k: max(v) for k, v in results.items()}
        print(f"{args.backbone} width {args.width}, {n} images 3x32x32, K = {run.hier.num_aux}, batch "
              f"{args.batch_size}, device {run.device}, torch threads {torch.get_num_threads()}, "
              f"best of {args.repeats}, allocator tuned: {tuned}")
        print(f"{'':24s}{'samples/s':>12s}{'ratio':>8s}")
        print(f"{'raw generator inference':24s}{best['raw']:12,.0f}{1.0:8.2f}")
        for k, label in (("hdf5", "export hdf5"), ("wds", "export wds --no-images")):
            print(f"{label:24s}{best[k]:12,.0f}{best[k] / best['raw']:8.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
