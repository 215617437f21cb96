"""Export throughput with 1 and 2 processes on CPU (gloo), side by side in one run.

Trains a small digits run (or takes --run), exports it once per process count with
`torchrun --nproc-per-node N -m auxgen export ...` (N = 1 runs without torchrun), checks that the
outputs are byte-identical, and prints samples per second. The time is the export's own (labels,
encoding, writing, manifest; the export summary's `seconds`), and beside it the whole command's wall time
(process start, imports, loading the run: the "command s" column). Usage:

    .venv/bin/python benchmarks/export_scaling.py [--format wds|hdf5] [--views 8] [--procs 1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> str:
    files = [path, path.with_name(path.name + ".manifest.json")] if path.suffix == ".h5" else sorted(path.iterdir())
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _worker(run: str, out: str, fmt: str, views: int, batch_size: int) -> None:
    """One process of an export (started by torchrun, or alone): what `auxgen export` runs, timed inside."""
    import torch

    from auxgen.distributed import current, shutdown
    from auxgen.export import export_labels

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    r = export_labels(run, out, fmt, views=views, batch_size=batch_size, device="cpu")
    if current().is_main:
        print(json.dumps({"seconds": r["seconds"]}))
    shutdown()


def _export(run: Path, out: Path, procs: int, args: argparse.Namespace) -> dict:
    cmd = [__file__, "--worker", str(run), str(out), args.format, str(args.views), str(args.batch_size)]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", "localhost:0", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "SOURCE_DATE_EPOCH": "1700000000",
           "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return {"procs": procs, "wall_s": wall, "export_s": seconds, "digest": _digest(out)}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        run, out, fmt, views, batch_size = sys.argv[2:7]
        return _worker(run, out, fmt, int(views), int(batch_size))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="run directory to export (default: train a small digits run)")
    p.add_argument("--format", default="wds", choices=("wds", "hdf5"))
    p.add_argument("--views", type=int, default=8, help="views per image (more labels per sample)")
    p.add_argument("--width", type=int, default=32, help="cnn width of the run trained here")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--procs", default="1,2")
    p.add_argument("--repeats", type=int, default=2, help="best of this many exports per process count")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            subprocess.run([sys.executable, "-m", "auxgen", "train", "--dataset", "digits", "--backbone", "cnn",
                            "--width", str(args.width), "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                            "--out", str(run), "-q"], cwd=ROOT, check=True)
        n = sum(json.loads((run / "config.json").read_text())["data"][k] for k in ("num_train", "num_test"))
        rows = n * max(args.views, 1)
        results = []
        for procs in (int(x) for x in args.procs.split(",")):
            best = None
            for r in range(args.repeats):
                out = Path(tmp) / f"out-{procs}-{r}" / ("labels.h5" if args.format == "hdf5" else "shards")
                res = _export(run, out, procs, args)
                best = res if best is None or res["export_s"] < best["export_s"] else best
            results.append(best)
        identical = len({r["digest"] for r in results}) == 1
        print(f"export scaling: digits, cnn width {args.width}, {args.format}, {n} samples x "
              f"{max(args.views, 1)} views = {rows} labels, {args.threads} thread(s) per process, "
              f"{os.cpu_count()} CPUs, best of {args.repeats}")
        print(f"{'processes':>9} {'export s':>9} {'labels/s':>9} {'speed-up':>9} {'command s':>10}")
        for r in results:
            print(f"{r['procs']:>9} {r['export_s']:>9.2f} {rows / r['export_s']:>9,.0f} "
                  f"{results[0]['export_s'] / r['export_s']:>8.2f}x {r['wall_s']:>10.2f}")
        print(f"outputs byte-identical across process counts: {identical}")


if __name__ == "__main__":
    main()
