"""The one device check (issue 19): the suite's cuda tests, then the paper's configuration timed side by side.

On a lent GPU machine (the device tool's `run`, from the lead's checkout, carry [".device-wheels"];
fill that folder first with `make device-wheels`):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --out $OUT

with timeout_s=540. On the CPU, end to end in seconds (tests/test_device_check.py runs it):

    python benchmarks/device_check.py --device cpu --quick --out /tmp/device-check

In one call it
  1. runs tests/test_cuda.py (they skip without CUDA), collecting the figures they measure;
  2. writes a synthetic CIFAR-100 in its on-disk format (python pickles: 50,000 + 10,000 32x32 RGB
     images, fine and coarse labels; --quick: a few hundred, and a small cnn instead of VGG-16);
  3. times the paper's configuration (VGG-16-BN both networks, batch 100, primary level 20, psi 5)
     through the trainer's own step functions, batch source and device-side tally: single-task,
     MAXL exact (interleaved), fused, first-order, --meta-every 5 and --hypergradient implicit, in
     fp32 and bf16, each as seconds per epoch (from a steady-state slice of --steps steps) and as a
     ratio to single-task of the same precision;
  4. exports the labels of a short run (HDF5, label-only shards) against raw generator inference;
  5. tries torch.compile (and CUDA graphs, mode reduce-overhead, on CUDA) of both networks, for
     single-task and MAXL exact, recording the error where a compile does not survive
     functional_call and forward-mode AD.
Every part is timed with fixed step counts; parts that would start after --budget-s are skipped
and say so. It prints one short table last, and writes $OUT/device_check.log (everything),
$OUT/device_check.json (the figures) and $OUT/cuda_figures.jsonl (the tests' measurements).
"""  # noqa: E501

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the device machine runs from a plain checkout, auxgen not installed
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from auxgen.config import TrainConfig  # noqa: E402

# the base: MAXL's exact meta-gradient every step, interleaved (the paper's objective; auxgen's defaults since
# issue 17 turn the meta-gradient off and use neighbour pairs, timed as "defaults")
EXACT = dict(meta_weight=1.0, consistency_weight=0.0, pairs="views", meta_every=1, pair_colour="off")
VARIANTS = {  # name -> config fields over the base
    "single": dict(method="single"),
    "exact": {},
    "defaults": {name: getattr(TrainConfig(), name) for name in EXACT},
    "fused": dict(fused_lookahead=True),
    "first_order": dict(meta_order=1),
    "meta_every_5": dict(meta_every=5),
    "implicit": dict(hypergradient="implicit"),
}
COMPILED = ("single", "exact")
COMPILE_HEADROOM_S = 150  # a compile on the device may take minutes: none starts with less of the budget left


class Log:
    """Everything printed goes to stdout and to the log file; `detail` goes to the log file only."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")

    def __call__(self, *parts: object) -> None:
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def detail(self, text: str) -> None:
        self.file.write(text if text.endswith("\n") else text + "\n")
        self.file.flush()


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A synthetic CIFAR-100 as the python pickles auxgen's loader reads (cifar-100-python/{train,test,meta})."""
    from auxgen.hierarchy import CIFAR100_FINE_NAMES, cifar100_fine_to, cifar100_names

    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = cifar100_fine_to(20).numpy()
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        batch = {"filenames": [f"synthetic_{i}.png" for i in range(n)], "batch_label": f"synthetic {name}",
                 "fine_labels": fine.tolist(), "coarse_labels": coarse_of[fine].tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": list(CIFAR100_FINE_NAMES), "coarse_label_names": list(cifar100_names(20))}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def base_config(args: argparse.Namespace, data_root: Path, precision: str, **fields) -> TrainConfig:
    kw = dict(dataset="cifar100", data_root=str(data_root), primary_level=20, psi="5", method="maxl",
              backbone=args.backbone, width=args.width, batch_size=args.batch, meta_order=2, epochs=1,
              device=args.device, seed=0, **EXACT)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if "precision" in names:  # the config's precision option, whichever name it has by now
        kw["precision"] = precision
    else:
        kw["bf16"] = precision == "bf16"
    kw.update(fields)
    return TrainConfig(**kw).validate()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(cfg: TrainConfig, data, steps: int, warmup: int, compile_mode: str | None = None,
                 backend: str = "inductor") -> dict:
    """Seconds per step of the trainer's loop body (batches, step function, tally, host sync every SYNC_EVERY)."""
    from auxgen.trainer import SYNC_EVERY, Tally, _start_epoch, pick_step, setup

    run = setup(cfg, data)
    rngs = {"data": torch.Generator().manual_seed(cfg.seed + 2), "aug": torch.Generator().manual_seed(cfg.seed + 3)}
    ep, _ = _start_epoch(run, 1, rngs)
    if compile_mode is not None:
        kw = {"backend": backend} if compile_mode == "default" else {"backend": backend, "mode": compile_mode}
        run.model.compile(**kw)
        if run.generator is not None:
            run.generator.compile(**kw)
    step_fn, tally, B = pick_step(cfg, run.targets), Tally(run), cfg.batch_size
    order = run.train_idx[torch.randperm(len(run.train_idx), generator=rngs["data"])]
    n_epoch = len(order) // B
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    t_first = time.perf_counter()
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            sync(run.device)
            t0 = time.perf_counter()
        rows = order[(i % n_epoch) * B:(i % n_epoch + 1) * B]
        with run.precision.context():
            res = step_fn(ep, i, rows)
        tally.add(res)
        if (i + 1) % SYNC_EVERY == 0:  # the trainer's periodic host sync (NaN check, progress)
            float(tally.sums["pri"])
    sync(run.device)
    per_step = (time.perf_counter() - t0) / steps
    loss = float(tally.sums["pri"]) / (warmup + steps)
    out = {"s_per_step": per_step, "s_per_epoch": per_step * n_epoch, "steps_per_epoch": n_epoch,
           "warmup_s": t0 - t_first, "loss_pri": loss, "finite": bool(np.isfinite(loss)),
           "precision": run.precision.active}
    if run.device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    del run, ep, tally
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def export_throughput(args: argparse.Namespace, data_root: Path, data, work: Path) -> dict:
    """Raw generator inference over both splits against full exports (HDF5; label-only shards), samples/s."""
    from auxgen.export import compute_soft_labels, export_labels
    from auxgen.run import load_run, load_run_data
    from auxgen.trainer import train

    cfg = base_config(args, data_root, "fp32")
    rows = torch.arange(min(len(data.train), args.export_train_rows))
    train(cfg, work / "run", show=False, data=data, train_idx=rows)
    run = load_run(work / "run", device=args.device)
    d = load_run_data(run)
    n = len(d.train) + len(d.test)
    out = {"images": n}

    def raw() -> float:
        t0 = time.perf_counter()
        for sp in (d.train, d.test):
            compute_soft_labels(run.generator, sp.images, sp.labels, run.device, args.export_batch)
        return n / (time.perf_counter() - t0)

    raw()  # warm-up
    out["raw_per_s"] = raw()
    for fmt, name in (("hdf5", "labels.h5"), ("wds", "shards")):
        t0 = time.perf_counter()
        export_labels(work / "run", work / name, fmt=fmt, images=False, batch_size=args.export_batch,
                      device=args.device)
        out[f"{fmt}_per_s"] = n / (time.perf_counter() - t0)
    return out


def run_tests(log: Log, out: Path, timeout: int) -> dict:
    figures = out / "cuda_figures.jsonl"
    figures.unlink(missing_ok=True)
    env = {**os.environ, "AUXGEN_CUDA_FIGURES": str(figures), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={out / 'cuda_tests.xml'}"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"{e.stdout or ''}{e.stderr or ''}\nTIMED OUT after {timeout} s", 124
    log.detail("---- pytest tests/test_cuda.py ----\n" + text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "skipped" in ln
                                                                      or "failed" in ln or "error" in ln)), "?")
    for ln in lines:
        if ln.startswith(("FAILED", "ERROR")):
            log("  " + ln[:200])
    measured = [json.loads(ln) for ln in figures.read_text().splitlines()] if figures.is_file() else []
    return {"rc": rc, "summary": summary.strip("= "), "seconds": time.perf_counter() - t0, "figures": measured}


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with what --quick and the device imply filled in (backbone, batch, set sizes, backend)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for device_check.log/.json")
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cuda or cpu")
    ap.add_argument("--quick", action="store_true", help="a tiny set and a small cnn: seconds, for a CPU rehearsal")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no part starts after this many seconds")
    ap.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile / CUDA graph variants")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; quick eager)")
    ap.add_argument("--data", type=Path, default=None, help="where to write the synthetic CIFAR-100 (default: temp)")
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    q = args.quick
    args.steps = args.steps or (1 if q else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.backbone, args.width, args.batch = ("cnn", 4, 10) if q else ("vgg16", None, 100)
    args.n_train, args.n_test = (60, 20) if q else (50_000, 10_000)
    args.export_train_rows, args.export_batch = (20, 100) if q else (2_000, 1_000)
    args.backend = args.compile_backend or ("eager" if q else "inductor")
    return args


def job_list(args: argparse.Namespace, dev: torch.device) -> list[tuple[str, str, str | None]]:
    """(variant, precision, compile mode) of every timed part, in the order they run."""
    # bf16 runs as float32 on the CPU (runtime.Precision): there one bf16 row checks that path alone
    bf16 = list(VARIANTS) if dev.type == "cuda" else ["exact"]
    jobs = [(v, "fp32", None) for v in VARIANTS] + [(v, "bf16", None) for v in bf16]
    jobs.append(("export", "fp32", None))
    if not args.no_compile:
        modes = ["default"] + (["reduce-overhead"] if dev.type == "cuda" else [])
        precisions = ("bf16", "fp32") if dev.type == "cuda" else ("fp32",)
        jobs += [(v, p, m) for m in modes for p in precisions for v in COMPILED]
    return jobs


def run_part(args: argparse.Namespace, job: tuple[str, str, str | None], work: Path, data: Any, log: Log,
             results: dict) -> None:
    """Time one part into results; a part that fails is logged with its traceback and the others go on."""
    variant, precision, mode = job
    key = f"{variant}/{precision}" + (f"/compile-{mode}" if mode else "")
    t0 = time.perf_counter()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            if variant == "export":
                r = export_throughput(args, work / "data", data, work / "export")
            else:
                cfg = base_config(args, work / "data", precision, **VARIANTS[variant])
                r = time_variant(cfg, data, args.steps, args.warmup, mode, args.backend)
        results["timings"][key] = r
        what = (f"{r['s_per_epoch']:.2f} s/epoch" if "s_per_epoch" in r
                else f"raw {r['raw_per_s']:,.0f}/s, hdf5 {r['hdf5_per_s']:,.0f}/s, wds {r['wds_per_s']:,.0f}/s")
        log(f"    {key}: {what} ({time.perf_counter() - t0:.1f} s)")
    except Exception as e:  # one part failing must not lose the others
        results["errors"][key] = _short(e)
        log(f"    {key}: FAILED {_short(e)}")
        log.detail(traceback.format_exc())
    finally:
        if buf.getvalue():
            log.detail(f"---- stderr of {key} ----\n{buf.getvalue()[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "device_check.log")
    start = time.perf_counter()
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "timings": {}, "skipped": [], "errors": {}}
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    log(f"device_check: torch {torch.__version__}, python {platform.python_version()}, device {dev} ({name}), "
        f"threads {torch.get_num_threads()}, {'quick' if args.quick else 'full'}: {args.backbone} width "
        f"{args.width or 'default'}, batch {args.batch}, {args.n_train}+{args.n_test} images, {args.steps} timed "
        f"steps after {args.warmup}")
    try:
        import webdataset
        results["webdataset"] = f"{getattr(webdataset, '__version__', '?')} from {Path(webdataset.__file__).parent}"
    except ImportError as e:
        results["webdataset"] = f"missing ({e})"
    log(f"webdataset: {results['webdataset']}")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    if not args.skip_tests:
        log("[1] tests/test_cuda.py ...")
        results["tests"] = run_tests(log, args.out, timeout=int(max(60, min(300, left() - 60))))
        log(f"    {results['tests']['summary']} (rc {results['tests']['rc']}, {results['tests']['seconds']:.0f} s)")

    work = Path(tempfile.mkdtemp(prefix="auxgen-device-check-", dir=args.data))
    try:
        t0 = time.perf_counter()
        write_cifar100(work / "data", args.n_train, args.n_test)
        from auxgen.data import load_data

        data = load_data(base_config(args, work / "data", "fp32"))
        results["data_s"] = time.perf_counter() - t0
        log(f"[2] synthetic CIFAR-100 written and loaded: {len(data.train)}+{len(data.test)} images, "
            f"{results['data_s']:.1f} s")
        for job in job_list(args, dev):
            if left() <= (COMPILE_HEADROOM_S if job[2] and dev.type == "cuda" else 0):
                key = f"{job[0]}/{job[1]}" + (f"/compile-{job[2]}" if job[2] else "")
                results["skipped"].append(key)
                log(f"    {key}: skipped (over --budget-s {args.budget_s:.0f})")
                continue
            run_part(args, job, work, data, log, results)
            results["total_s"] = time.perf_counter() - start  # kept current: a run cut short keeps its figures
            (args.out / "device_check.json").write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["total_s"] = time.perf_counter() - start
    (args.out / "device_check.json").write_text(json.dumps(results, indent=1))
    log("")
    log(table(results, dev))
    return 0 if not results["errors"] and results.get("tests", {}).get("rc", 0) in (0, 5) else 1


def table(results: dict, dev: torch.device) -> str:
    """The short summary: seconds per epoch and ratios to single-task; the tests; export; failures."""
    t = results["timings"]
    lines = [f"device_check on {dev}: seconds per epoch (steady-state slice), ratio to single-task of the same "
             f"precision and compile mode",
             f"{'variant':<14}{'fp32 s/ep':>10}{'ratio':>7}{'bf16 s/ep':>11}{'ratio':>7}"]
    for mode in (None, "default", "reduce-overhead"):
        suffix = f"/compile-{mode}" if mode else ""
        names = [v for v in VARIANTS if any(f"{v}/{p}{suffix}" in t for p in ("fp32", "bf16"))]
        if mode and names:
            lines.append(f"torch.compile mode {mode}:")
        for v in names:
            row = f"{v:<14}"
            for p in ("fp32", "bf16"):
                r, s = t.get(f"{v}/{p}{suffix}"), t.get(f"single/{p}{suffix}")
                cell = f"{r['s_per_epoch']:>10.2f}" if r else f"{'-':>10}"
                ratio = f"{r['s_per_epoch'] / s['s_per_epoch']:>7.2f}" if r and s else f"{'-':>7}"
                row += cell + ratio + (" " if p == "fp32" else "")
            lines.append(row)
    e = t.get("export/fp32")
    if e:
        lines.append(f"export ({e['images']} images): raw inference {e['raw_per_s']:,.0f}/s; "
                     f"hdf5 {e['hdf5_per_s']:,.0f}/s ({e['hdf5_per_s'] / e['raw_per_s']:.2f}x); "
                     f"wds --no-images {e['wds_per_s']:,.0f}/s "
                     f"({e['wds_per_s'] / e['raw_per_s']:.2f}x)")
    tests = results.get("tests")
    if tests:
        lines.append(f"cuda tests: {tests['summary']}")
        syncs = [f for f in tests["figures"] if f["test"].startswith("host_sync")]
        for f in tests["figures"]:
            if f not in syncs:
                lines.append("  " + json.dumps({k: v for k, v in f.items() if k != "device"})[:160])
        if syncs:
            bad = [f"{f['test'][10:-1]} at {','.join(f['sync_sites'])}" for f in syncs if f["sync_sites"]]
            lines.append(f"  host syncs in the step loop: {'; '.join(bad)[:300] if bad else 'none'} "
                         f"({len(syncs)} cases)")
    for key, err in results["errors"].items():
        lines.append(f"FAILED {key}: {err[:150]}")
    if results["skipped"]:
        lines.append(f"skipped (time): {', '.join(results['skipped'])}")
    lines.append(f"total {results['total_s']:.0f} s; full log device_check.log, figures device_check.json")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
