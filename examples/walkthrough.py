"""End-to-end walkthrough on the offline digits set: train MAXL, export the labels, train downstream
on the frozen labels with pipelines/, and verify the run and its exports. `make demo` runs this;
the README quotes it.

    python examples/walkthrough.py --out runs/demo

Everything lands under --out: run/ (the MAXL run), labels/digits.h5 (HDF5 export + TorchScript
generator), shards/labels/ (label-only shards), shards/images/ (images + labels + generator),
reports/ (verify reports as JSON).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `pipelines` when run from anywhere


def title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def auxgen(*args: str) -> None:
    """Run an auxgen command in this process (one torch import for the whole walkthrough)."""
    from auxgen.cli import app
    from auxgen.errors import AuxgenError

    print("$ auxgen " + shlex.join(args), flush=True)
    try:
        app(list(args), standalone_mode=False)
    except AuxgenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def pipeline(name: str, *args: str) -> None:
    """A pipelines/ script's main(); each also runs alone as `python pipelines/NAME.py` without auxgen."""
    import importlib

    print(f"$ python pipelines/{name}.py " + shlex.join(args), flush=True)
    importlib.import_module(f"pipelines.{name}").main(list(args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="folder for the run, exports and reports (rewritten)")
    ap.add_argument("--epochs", type=int, default=20, help="MAXL training epochs")
    ap.add_argument("--downstream-epochs", type=int, default=3, help="epochs of each downstream pipeline")
    ap.add_argument("--retrain", type=int, default=10, help="epochs of verify's label-quality retraining (0: skip)")
    ap.add_argument("--width", type=int, default=32, help="CNN width (smaller is faster)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: tiny convolutions gain little from more, and lose much when shared)")
    args = ap.parse_args()
    import torch

    from auxgen.runtime import tune_cpu_allocator

    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as the auxgen command does
    out = Path(args.out)
    run, h5 = out / "run", out / "labels" / "digits.h5"
    label_shards, image_shards, reports = out / "shards" / "labels", out / "shards" / "images", out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    de = str(args.downstream_epochs)

    # 1. co-train the multi-task network and the label generator on digits with the small CNN
    title("1. train MAXL on digits")
    auxgen("train", "--dataset", "digits", "--backbone", "cnn", "--width", str(args.width), "--psi", "5",
           "--epochs", str(args.epochs), "--batch-size", "50", "--lr", "0.05", "--gen-lr", "0.05",
           "--seed", "0", "--out", str(run), "--force")

    # 2. export the generator's soft labels: one HDF5 file, label-only shards, and shards with images
    title("2. export the labels")
    auxgen("export", str(run), "--format", "hdf5", "--out", str(h5), "--generator", "--force")
    auxgen("export", str(run), "--format", "wds", "--out", str(label_shards), "--no-images", "--force", "--quiet")
    auxgen("export", str(run), "--format", "wds", "--out", str(image_shards), "--shard-size", "200KB",
           "--generator", "--force", "--quiet")

    # 3. train downstream networks on the frozen labels, with nothing but pipelines/
    title("3a. PyTorch Dataset over the HDF5 export, paired with the digits by key")
    pipeline("torch_frozen", "--labels", str(h5), "--dataset", "digits", "--epochs", de)
    title("3b. WebDataset stream: label-only shards joined with image shards by key")
    pipeline("wds_stream", "--shards", str(label_shards), "--images", str(image_shards), "--epochs", de)
    title("3c. plain numpy batches")
    pipeline("numpy_reader", str(h5))
    title("3d. targets refreshed every 2 epochs by the exported TorchScript generator")
    pipeline("refresh", "--shards", str(image_shards), "--epochs", de, "--every", "2")

    # 4. verify: the recorded accuracy, both exports, and (optionally) the labels' worth by retraining
    title("4. verify the run and its exports")
    auxgen("verify", str(run), "--labels", str(h5), "--json", str(reports / "verify-hdf5.json"))
    retrain = ["--retrain", str(args.retrain), "--baseline", "random"] if args.retrain else []
    auxgen("verify", str(run), "--labels", str(label_shards), *retrain, "--json", str(reports / "verify-shards.json"))

    import json

    summary = json.loads((run / "summary.json").read_text())
    print(f"\nwalkthrough finished in {time.perf_counter() - t0:.0f} s")
    print(f"  test primary accuracy  {100 * summary['final_test_acc']:.2f}% (last epoch), "
          f"{100 * summary['best_test_acc']:.2f}% (best, epoch {summary['best_epoch']})")
    print(f"  auxiliary usage        entropy {summary['aux_usage_entropy']:.3f} of max "
          f"{summary['aux_usage_entropy_max']:.3f} nats; per-sample entropy in block "
          f"{100 * summary['aux_sample_entropy_frac']:.1f}% of max")
    for what, path in (("run", run), ("HDF5 labels", h5), ("label-only shards", label_shards),
                       ("image shards", image_shards), ("verify reports", reports)):
        print(f"  {what:22s} {path}")


if __name__ == "__main__":
    main()
