"""End-to-end walkthrough on the offline digits set as a hierarchy task (primary: digits 0-4 vs
5-9; the digit itself is the human auxiliary label): train MAXL and a single-task baseline,
export the labels, train downstream on them with pipelines/, verify the run and its exports, and
write the visual report. `make demo` runs this; the README describes it, docs/cli.md each command at length.

    python examples/walkthrough.py --out runs/demo

Everything lands under --out: run/ (the MAXL run), single/ (the baseline), labels/digits.h5
(HDF5 export + the generator as .pt2 and .onnx), shards/labels/ (label-only shards),
shards/images/ (images + labels + generator), reports/ (verify reports as JSON), report/index.html.
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


def auxgen(*args: str, measurement: bool = False) -> None:
    """Run an auxgen command in this process (one torch import for the whole walkthrough).

    measurement=True: a failed check is a finding to report (e.g. labels that do not help), not
    a broken walkthrough, so it is printed and the walkthrough goes on.
    """
    from auxgen.cli import app
    from auxgen.errors import AuxgenError
    from auxgen.recipes.verify import VerificationFailed

    print("$ auxgen " + shlex.join(args), flush=True)
    try:
        app(list(args), standalone_mode=False)
    except VerificationFailed as e:
        if not measurement:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        print(f"finding: {e} (see the quality row above)", flush=True)
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
    ap.add_argument("--epochs", type=int, default=15, help="training epochs of MAXL and the baseline")
    ap.add_argument("--downstream-epochs", type=int, default=3, help="epochs of each downstream pipeline")
    ap.add_argument("--retrain", type=int, default=10, help="epochs of verify's label-quality retraining (0: skip)")
    ap.add_argument("--width", type=int, default=16, help="CNN width (smaller is faster)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: tiny convolutions gain little from more, and lose much when shared)")
    args = ap.parse_args()
    import torch

    from auxgen.runtime import tune_cpu_allocator

    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as the auxgen command does
    out = Path(args.out)
    run, single, h5 = out / "run", out / "single", out / "labels" / "digits.h5"
    label_shards, image_shards, reports = out / "shards" / "labels", out / "shards" / "images", out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    de = str(args.downstream_epochs)

    # 1. co-train the multi-task network and the label generator (auxgen's defaults, small CNN),
    #    and train the single-task baseline the same way
    title("1. train MAXL on digits 0-4 vs 5-9 (psi 5 from the digit tree), and a single-task baseline")
    common = ["--dataset", "digits", "--primary-groups", "2", "--backbone", "cnn", "--width", str(args.width),
              "--epochs", str(args.epochs), "--batch-size", "32", "--seed", "0", "--force"]
    auxgen("train", *common, "--out", str(run))
    auxgen("train", *common, "--method", "single", "--out", str(single), "--quiet")

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
    title("3d. targets refreshed every 2 epochs by the exported generator (.pt2)")
    pipeline("refresh", "--shards", str(image_shards), "--epochs", de, "--every", "2")

    # 4. verify: the recorded accuracy, both exports, and (optionally) the labels' worth by retraining
    title("4. verify the run and its exports")
    auxgen("verify", str(run), "--labels", str(h5), "--json", str(reports / "verify-hdf5.json"))
    retrain = ["--retrain", str(args.retrain), "--seeds", "3"] if args.retrain else []
    auxgen("verify", str(run), "--labels", str(label_shards), "--json", str(reports / "verify-shards.json"))
    if retrain:  # the labels' worth: a measurement whose verdict may well be "no measurable effect" or worse
        auxgen("verify", str(run), "--labels", str(label_shards), *retrain, "--json",
               str(reports / "verify-quality.json"), measurement=True)

    # 5. look at the labels: curves of MAXL and the baseline, label usage, image grids, agreement with the digits
    title("5. the visual report")
    auxgen("report", str(run), str(single), "--labels", str(h5), "--out", str(out / "report"), "--force")

    import json

    summary = json.loads((run / "summary.json").read_text())
    print(f"\nwalkthrough finished in {time.perf_counter() - t0:.0f} s")
    print(f"  test primary accuracy  {100 * summary['final_test_acc']:.2f}% (last epoch), "
          f"{100 * summary['best_test_acc']:.2f}% (best, epoch {summary['best_epoch']}: selected on the test set, "
          f"so the exports use the last epoch)")
    print(f"  auxiliary usage        entropy {summary['aux_usage_entropy']:.3f} of max "
          f"{summary['aux_usage_entropy_max']:.3f} nats; per-sample entropy in block "
          f"{100 * summary['aux_sample_entropy_frac']:.1f}% of max; block usage "
          f"{100 * summary['aux_block_usage_frac']:.1f}% of max")
    if args.retrain:
        for check in json.loads((reports / "verify-quality.json").read_text())["checks"]:
            if check["name"] == "quality":
                print(f"  label quality ({check['status']}): {check['reason']}")
    print(benchmark_line())
    for what, path in (("run", run), ("single-task baseline", single), ("HDF5 labels", h5),
                       ("label-only shards", label_shards), ("image shards", image_shards),
                       ("verify reports", reports), ("report (open it in a browser)", out / "report" / "index.html")):
        print(f"  {what:30s} {path}")


BENCH_DIR = ROOT / "docs" / "label_quality"
# (task, rows, the defaults' variant there, what the task is, the command that measures it again)
BENCH_TASKS = (
    ("g2-10", "g2-10-30.json", "maxl:nb-cons-nometa-every2", "on 144 digits (benchmark task g2-10, 30 seeds)",
     "python benchmarks/label_quality.py --tasks g2-10 --seeds 30 --jobs 2 "
     "--methods single,random,human,maxl:nb-cons-nometa-every2"),
    ("digits-rgb", "digits-rgb-20.json", "maxl:gin-aligned", "on 400 colour digits (task digits-rgb, 20 seeds)",
     "python benchmarks/label_quality.py --tasks digits-rgb --seeds 20 --jobs 2 --methods single,random,human,maxl"),
)


def benchmark_line() -> str:
    """What the defaults' labels are worth where labels can help (the label-quality benchmark's tasks that qualify),
    computed from its committed rows, with the commands that measure them again."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_quality import diff_ci, oracle_gain

    lines = []
    for task, file, variant, what, command in BENCH_TASKS:
        rows = json.loads((BENCH_DIR / file).read_text())["rows"]
        d, h = diff_ci(rows, task, variant, "single", "frozen", "acc")
        gain, gh = oracle_gain(rows, task)
        head = "the defaults' labels" if not lines else ""
        lines.append(f"  {head:23s} {what} frozen labels gain {100 * d:+.2f} ± {100 * h:.2f} points over "
                     f"single-task, {100 * d / gain:.0f}% of the fine labels' {100 * gain:+.2f} ± {100 * gh:.2f}\n"
                     f"  {'':23s} (rows {(BENCH_DIR / file).relative_to(ROOT)}; measure again: {command})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
