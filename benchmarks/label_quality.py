"""The label-quality yardstick: do the generated auxiliary labels carry information, and do they help?

Offline, on real data (scikit-learn's digits): hierarchy tasks where the primary task is a
grouping of digits and the human auxiliary task is the digit itself, the paper's CIFAR-100
design in miniature. For each task, method and seed it trains through auxgen's own trainer and
reports, on the test split:

  acc        primary test accuracy of the method's own training (MAXL: co-training)
  frozen     MAXL only: a fresh network trained on the generator's frozen soft labels
  H/max      per-sample label entropy / log psi (1 = uniform inside the block)
  usage      usage entropy of each block / log psi (1 = every auxiliary class used evenly)
  NMI, ARI   agreement of hard labels with the human fine labels, within each primary class

Means come with 95% intervals over seeds (t distribution). Usage:

  python benchmarks/label_quality.py --quick              # CI-sized, about a minute
  python benchmarks/label_quality.py --seeds 5 --out docs/label_quality.json
  python benchmarks/label_quality.py --suite --seeds 10 --methods single,human,random   # docs/yardstick.md

Methods: single, random, human, kmeans, maxl; METHOD:VARIANT applies a variant of VARIANTS
(e.g. maxl:paper, the published hyper-parameters; single:paper, the paper's training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auxgen.compose import hierarchy_for, load_data  # noqa: E402
from auxgen.config import PRESETS, TrainConfig  # noqa: E402
from auxgen.export import compute_soft_labels  # noqa: E402
from auxgen.hierarchy import random_labels  # noqa: E402
from auxgen.kmeans import features, kmeans_labels  # noqa: E402
from auxgen.label_stats import LabelStats  # noqa: E402
from auxgen.stats import mean_ci, verdict  # noqa: E402
from auxgen.trainer import TargetSource, train  # noqa: E402
from benchmarks import tasks as yardstick  # noqa: E402

SHAPES = Path(__file__).resolve().parents[1] / "runs" / "bench-data" / "shapes-20"  # written once, on first use
SHAPES_PER_CLASS = 20  # training images per fine class (120 in all); 50 per class for testing
DIGIT_IMAGES = SHAPES.parent / "digits-rgb-40"  # benchmarks/digit_images.py, 40 training images per digit
# task name -> (options of the task, fraction of the training set, epochs)
TASKS: dict[str, tuple[dict[str, Any], float, int]] = {
    "g2": ({"primary_groups": 2}, 1.0, 20), "g5": ({"primary_groups": 5}, 1.0, 20),
    "g2-small": ({"primary_groups": 2}, 0.2, 40), "g5-small": ({"primary_groups": 5}, 0.2, 40),
    "g2-10": ({"primary_groups": 2}, 0.1, 80), "g2-5": ({"primary_groups": 2}, 0.05, 80),
    "g5-10": ({"primary_groups": 5}, 0.1, 80),
    # the image task: 32x32 RGB shapes with a colour nuisance (benchmarks/shapes_task.py), 120 training
    # images, crop-and-flip augmentation for every method
    "shapes": ({"dataset": "imagefolder", "data_root": str(SHAPES / "train"), "test_root": str(SHAPES / "test"),
                "hierarchy_depth": 2, "image_size": 32, "augment": "on", "flip": True}, 1.0, 30),
    # the digits as 32x32 colour images, random size, offset and colours (benchmarks/digit_images.py): 400
    # training images, crop augmentation without flips (a mirrored digit is another digit)
    "digits-rgb": ({"dataset": "imagefolder", "data_root": str(DIGIT_IMAGES / "train"),
                    "test_root": str(DIGIT_IMAGES / "test"), "hierarchy_depth": 2, "image_size": 32, "augment": "on",
                    "flip": False}, 1.0, 60),
    # the yardstick suite's own image tasks (benchmarks/tasks, docs/yardstick.md), each written on first use
    **{name: (yardstick.train_options(name), 1.0, t.epochs) for name, t in yardstick.TASKS.items()},
}
# --suite: every yardstick task, the two earlier benchmark tasks first
SUITE = ["g2-10", "digits-rgb", *yardstick.TASKS]
# option overrides of a method (METHOD:VARIANT) on top of the benchmark's base options
# the defaults before issue 17 (MAXL's meta-gradient, no pair term): the studies below are variants of them
V0 = dict(meta_weight=1.0, consistency_weight=0.0, pairs="views", meta_every=1, pair_colour="off", gen_input="image")
# neighbour consistency without the meta-gradient, spelled out (today's defaults add meta_every=2, pair_colour=auto,
# neighbour_match=shape; on greyscale data shape and pixels are the same neighbours)
NB = dict(consistency_weight=1.0, pairs="neighbours", meta_weight=0.0, meta_every=1, pair_colour="off",
          neighbour_match="pixels", gen_input="image")
D2 = dict(NB, meta_every=2)  # today's defaults on greyscale data, spelled out
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},                        # auxgen's defaults (whatever config.py says)
    "paper": dict(PRESETS["paper"]),      # the published hyper-parameters, training included
    "paper-obj": dict(V0, usage_entropy="batch", sharpness_weight=0.0, meta_norm="none", gen_optimizer="sgd",
                      gen_lr=1e-3, entropy_weight=0.2),  # the published objective, auxgen's training
    "v0": V0,
    "nometa": dict(V0, meta_weight=0.0),  # the ablation: the label regularisers without the meta-gradient
    "mi1": dict(V0, entropy_weight=1.0),
    "sgd": dict(V0, gen_optimizer="sgd"),
    "consistency": dict(V0, consistency_weight=1.0),
    "inv": dict(V0, invariance_weight=1.0),   # the within-class invariance prior (IIC) on top of v0
    "inv-colour": dict(V0, invariance_weight=1.0, pair_colour="on"),  # ... whose second views also change colour
    "inv-only": dict(V0, invariance_weight=1.0, entropy_weight=0.0, sharpness_weight=0.0),  # IIC replaces both
    "inv-nometa": dict(V0, invariance_weight=1.0, meta_weight=0.0),
    "aux25": dict(V0, aux_weight=0.25),       # AuxiLearn's auxiliary-loss scale
    "every4": dict(V0, meta_every=4),         # amortised: a meta step every 4 training steps
    "split": dict(V0, meta_split=0.2),        # the meta objective on held-out rows
    "glr3": dict(V0, gen_lr=3e-3),            # a faster generator: few steps on small data
    "glr10": dict(V0, gen_lr=1e-2),
    "alpha": dict(V0, meta_norm="alpha"),     # the meta-signal divided by alpha: it does not shrink with the step
    "sharp3": dict(V0, sharpness_weight=3.0, entropy_weight=6.0),
    "implicit": dict(V0, hypergradient="implicit", meta_split=0.2, meta_every=4, meta_norm="alpha"),
    "nb-inv": dict(V0, invariance_weight=1.0, pairs="neighbours"),      # pairs: a same-class nearest image
    "nb-cons": dict(NB, meta_weight=1.0),     # neighbour consistency with MAXL's meta-gradient
    "nb-cons-nometa": NB,                     # ... without it: the defaults
    "nb-cons-nometa-gw8": dict(NB, gen_width=8),
    "nb-cons-nometa-every2": dict(NB, meta_every=2),
    "nb-cons-nometa-colour": dict(NB, pair_colour="on"),
    "nb-cons-nometa-every2-colour": dict(NB, meta_every=2, pair_colour="on"),
    "nb-cons-split": dict(NB, meta_weight=1.0, meta_split=0.2),       # ... with the meta step on held-out rows
    "nb-cons-implicit": dict(NB, meta_weight=1.0, hypergradient="implicit", meta_split=0.2, meta_every=4,
                             meta_norm="alpha"),
    # AuxiLearn's learned non-negative weighting of the per-sample losses, trained by the meta-signal
    "v0-learned": dict(V0, aux_weighting="learned"),
    "nb-cons-learned": dict(NB, meta_weight=1.0, aux_weighting="learned"),
    "implicit-learned": dict(V0, hypergradient="implicit", meta_split=0.2, meta_every=4, meta_norm="alpha",
                             aux_weighting="learned"),
    # screens of today's defaults on greyscale data (D2, spelled out), one change each
    "d-cw2": dict(D2, consistency_weight=2.0), "d-cw3": dict(D2, consistency_weight=3.0),
    "d-k3": dict(D2, neighbours=3), "d-k10": dict(D2, neighbours=10),
    "d-glr3": dict(D2, gen_lr=3e-3), "d-sharp2": dict(D2, sharpness_weight=2.0),
    "d-ent4": dict(D2, entropy_weight=4.0),
    # more generator training: a faster generator, every step or every 2, full or half width
    "nb-g3": dict(NB, gen_lr=3e-3), "nb-g10": dict(NB, gen_lr=1e-2), "d-g10": dict(D2, gen_lr=1e-2),
    "d-gw8-g3": dict(D2, gen_width=8, gen_lr=3e-3), "nb-gw8-g3": dict(NB, gen_width=8, gen_lr=3e-3),
    # the defaults with neighbours compared by shape (colour-invariant: today's default) or by pixels, colour
    # included (the default before); the two are the same on greyscale data
    "shape": dict(neighbour_match="shape", gen_input="image"),
    "pixels": dict(neighbour_match="pixels", gen_input="image"),
    # ... by the multi-task network's features, mined every epoch
    "features": dict(neighbour_match="features", gen_input="image"),
    "aligned": dict(neighbour_match="aligned", gen_input="image"),  # ... by shape, ink centred and scaled by moments
    # the generator sees each image's colour-free shape map (--gen-input shape), neighbours by shape or aligned
    "gin-shape": dict(neighbour_match="shape", gen_input="shape"),
    "gin-aligned": dict(neighbour_match="aligned", gen_input="shape"),
    # ... with a generator step after every training step
    "gin-aligned-every1": dict(neighbour_match="aligned", gen_input="shape", meta_every=1),
    # two knobs of the shape-matched defaults, on RGB
    "shape-k10": dict(neighbour_match="shape", gen_input="image", neighbours=10),
    "shape-every1": dict(neighbour_match="shape", gen_input="image", meta_every=1),
}
# no flips: a mirrored digit is another digit (they matter only for the generator's pair views)
BASE = dict(dataset="digits", backbone="cnn", width=16, batch_size=32, device="cpu", augment="off", flip=False)


def _nmi_ari(hard: np.ndarray, fine: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """NMI and ARI of hard labels with the fine labels inside each primary class, weighted by class size."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    nmi = ari = 0.0
    for c in np.unique(y):
        rows = y == c
        nmi += rows.sum() * normalized_mutual_info_score(fine[rows], hard[rows])
        ari += rows.sum() * adjusted_rand_score(fine[rows], hard[rows])
    return nmi / len(y), ari / len(y)


def _label_metrics(soft: torch.Tensor | None, hard: np.ndarray, split: Any, psi: tuple[int, ...]) -> dict[str, float]:
    y, fine = split.labels.numpy(), split.fine.numpy()
    nmi, ari = _nmi_ari(hard, fine, y)
    out = {"nmi": nmi, "ari": ari}
    stats = LabelStats(psi)
    stats.add(soft if soft is not None else torch.nn.functional.one_hot(torch.from_numpy(hard), sum(psi)).double(),
              split.labels)
    s = stats.summary()
    out.update(sample_frac=s["aux_sample_entropy_frac"], usage_frac=s["aux_block_usage_frac"])
    return out


def _subset(n: int, frac: float, seed: int) -> torch.Tensor | None:
    if frac >= 1:
        return None
    g = torch.Generator().manual_seed(10_000 + seed)  # the same subset for every method of a seed
    return torch.randperm(n, generator=g)[: int(round(n * frac))].sort().values


def _config(task: str, method: str, seed: int, epochs: int) -> TrainConfig:
    task_opts, _, task_epochs = TASKS[task]
    name, _, variant = method.partition(":")
    opts = {**VARIANTS[variant or "default"], **BASE, **task_opts, "epochs": epochs or task_epochs, "seed": seed,
            "method": name}
    if variant == "paper":  # the preset fixes the training too, except what the task fixes and its length
        fixed = {*BASE, *task_opts, "epochs", "psi"}
        opts.update({k: v for k, v in PRESETS["paper"].items() if k not in fixed})
    return TrainConfig(**opts).validate()


def cost(task: str, methods: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds of each method's own training (seed 0) and, for maxl, of labelling the training set as an
    export does, run in turn `rounds` times in one process, so that whatever else the machine does weighs
    on every method alike: the ratio of medians is the cost, end to end."""
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            cfg = _config(task, m, 0, 0)
            data = load_data(cfg)
            idx = _subset(len(data.train), TASKS[task][1], 0)
            t0 = time.perf_counter()
            res = train(cfg, None, show=False, data=data, train_idx=idx, return_run=True)
            if cfg.method == "maxl":  # end to end: the export's work, labelling the training set, counts too
                run = res["run"]
                compute_soft_labels(run.generator, data.train.images, data.train.labels, run.device)
            times[m].append(time.perf_counter() - t0)
    return times


def write_task_data(tasks: list[str]) -> None:
    """Write the image tasks' folders (once; later calls find them) for the tasks named."""
    if "shapes" in tasks:
        from shapes_task import make_task

        make_task(SHAPES, SHAPES_PER_CLASS)
    if "digits-rgb" in tasks:
        from digit_images import make_task as make_digits

        make_digits(DIGIT_IMAGES, 40)
    for name in yardstick.TASKS.keys() & set(tasks):
        yardstick.make(name)


def run_one(task: str, method: str, seed: int, epochs: int) -> dict[str, Any]:
    """Train one (task, method, seed) and measure its labels and accuracy."""
    torch.set_num_threads(1)
    _, frac, _ = TASKS[task]
    name, _, variant = method.partition(":")
    cfg = _config(task, method, seed, epochs)
    epochs = cfg.epochs
    data = load_data(cfg)
    idx = _subset(len(data.train), frac, seed)
    hier, human_map = hierarchy_for(cfg, data)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"task": task, "method": method, "seed": seed, "epochs": epochs}
    if name == "kmeans":  # single-task features first, then k-means inside each class, then train on them
        pre = train(dataclasses.replace(cfg, method="single"), None, show=False, data=data, train_idx=idx,
                    return_run=True)["run"]
        tr_f, te_f = features(pre.model, data.train, pre.device), features(pre.model, data.test, pre.device)
        hard_tr, hard_te = kmeans_labels(tr_f, data.train.labels.numpy(), hier, seed, te_f, data.test.labels.numpy())
        s = train(cfg, None, show=False, data=data, train_idx=idx,
                  targets=TargetSource("hard", torch.from_numpy(hard_tr)))
        row.update(acc=s["final_test_acc"], **_label_metrics(None, hard_te, data.test, hier.psi))
    else:
        s = train(cfg, None, show=False, data=data, train_idx=idx, return_run=True)
        row["acc"], row["train_s"] = s["final_test_acc"], time.perf_counter() - t0
        if name == "maxl":
            run = s["run"]
            soft_te = compute_soft_labels(run.generator, data.test.images, data.test.labels, run.device)
            row.update(_label_metrics(soft_te, soft_te.argmax(1).numpy(), data.test, hier.psi))
            soft_tr = compute_soft_labels(run.generator, data.train.images, data.train.labels, run.device)
            frozen = train(dataclasses.replace(cfg, method="single"), None, show=False, data=data, train_idx=idx,
                           targets=TargetSource("soft", soft_tr))
            row["frozen"] = frozen["final_test_acc"]
        elif name == "human":
            row.update(_label_metrics(None, human_map[data.test.fine].numpy(), data.test, hier.psi))
        elif name == "random":
            rand = random_labels(hier, data.test.labels, torch.Generator().manual_seed(seed + 1))
            row.update(_label_metrics(None, rand.numpy(), data.test, hier.psi))
    row["time_s"] = time.perf_counter() - t0
    return row


def diff_ci(rows: list[dict], task: str, a: str, b: str, key_a: str = "acc", key_b: str = "acc") -> tuple[float, float]:
    """Paired (same seed) difference a - b with its 95% interval."""
    pa = {r["seed"]: r.get(key_a) for r in rows if r["task"] == task and r["method"] == a}
    pb = {r["seed"]: r.get(key_b) for r in rows if r["task"] == task and r["method"] == b}
    return mean_ci([pa[s] - pb[s] for s in sorted(pa.keys() & pb.keys()) if pa[s] is not None and pb[s] is not None])


def table(rows: list[dict]) -> str:
    """A markdown table: one line per (task, method), means with 95% intervals."""
    def fmt(vals: list, scale: float = 100, digits: int = 1) -> str:
        m, h = mean_ci([v for v in vals if v is not None])
        if math.isnan(m):
            return "-"
        return f"{scale * m:.{digits}f}" + ("" if math.isnan(h) else f" ± {scale * h:.{digits}f}")

    lines = ["| task | method | n | acc | frozen acc | H/max | usage | NMI | ARI |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["task"], r["method"]) for r in rows}, key=lambda k: (list(TASKS).index(k[0]), k[1]))
    for task, method in keys:
        rs = [r for r in rows if r["task"] == task and r["method"] == method]
        def col(k: str, rs: list[dict] = rs) -> list:
            return [r.get(k) for r in rs]

        lines.append(f"| {task} | {method} | {len(rs)} | {fmt(col('acc'))} | {fmt(col('frozen'))} | "
                     f"{fmt(col('sample_frac'), 1, 3)} | {fmt(col('usage_frac'), 1, 3)} | {fmt(col('nmi'), 1, 3)} | "
                     f"{fmt(col('ari'), 1, 3)} |")
    return "\n".join(lines)


def oracle_gain(rows: list[dict], task: str) -> tuple[float, float]:
    """The data's own fine labels (human) against single-task: what auxiliary labels can gain here."""
    return diff_ci(rows, task, "human", "single")


def qualifies(rows: list[dict], task: str) -> bool:
    """A task is a yardstick for "helps" only where the oracle's gain over single-task excludes zero."""
    d, h = oracle_gain(rows, task)
    return not math.isnan(h) and d - h > 0


def calibration(rows: list[dict]) -> str:
    """Per task: the oracle's gain and random labels' effect, paired by seed, and whether the task qualifies."""
    out = ["| task | seeds | human - single | random - single | kmeans - single | qualifies |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    for task in _tasks(rows):
        cells = []
        for m in ("human", "random", "kmeans"):
            d, h = diff_ci(rows, task, m, "single")
            cells.append("-" if math.isnan(d) else f"{100 * d:+.2f} ± {100 * h:.2f}")
        n = len({r["seed"] for r in rows if r["task"] == task and r["method"] == "single"})
        out.append(f"| {task} | {n} | {' | '.join(cells)} | {'yes' if qualifies(rows, task) else 'no'} |")
    return "\n".join(out)


def _mean_time(rows: list[dict], task: str, method: str, run: str | None) -> float:
    """Mean training seconds of a method's rows of one benchmark run: times of different runs met other loads."""
    ts = [r.get("train_s", r["time_s"]) for r in rows
          if r["task"] == task and r["method"] == method and r.get("run") == run]
    return sum(ts) / len(ts) if ts else math.nan


def _run_of(rows: list[dict], task: str) -> str | None:
    return next((r.get("run") for r in rows if r["task"] == task and r["method"] == "single"), None)


def comparisons(rows: list[dict]) -> str:
    """Every maxl variant, frozen (as exported) and co-trained, against single-task, random labels and the
    oracle, paired by seed; the share of the oracle's gain it captures; its training cost against single-task."""
    out = ["| task | method | labels | - single | - random | - human | captured | cost (x single) |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for task in _tasks(rows):
        gain, _ = oracle_gain(rows, task)
        run = _run_of(rows, task)
        single_s = _mean_time(rows, task, "single", run)
        for m in sorted({r["method"] for r in rows if r["task"] == task and r["method"].startswith("maxl")}):
            for key, label in (("frozen", "frozen"), ("acc", "co-trained")):
                diffs = [diff_ci(rows, task, m, base, key, "acc") for base in ("single", "random", "human")]
                if all(math.isnan(d) for d, _ in diffs):
                    continue
                cells = ["-" if math.isnan(d) else f"{100 * d:+.2f} ± {100 * h:.2f} {_mark(d, h)}" for d, h in diffs]
                share = diffs[0][0] / gain if qualifies(rows, task) and gain > 0 else math.nan
                cost = _mean_time(rows, task, m, run) / single_s  # nan: not timed beside single-task
                out.append(f"| {task} | {m} | {label} | {' | '.join(cells)} | "
                           f"{'-' if math.isnan(share) else f'{100 * share:.0f}%'} | "
                           f"{'-' if math.isnan(cost) else f'{cost:.1f}'} |")
    return "\n".join(out)


def _mark(d: float, h: float) -> str:
    v = verdict(d, h)
    return {"helps": "(+)", "hurts": "(-)"}.get(v, "")


def _tasks(rows: list[dict]) -> list[str]:
    return [t for t in TASKS if any(r["task"] == t for r in rows)]


def _reusable(files: list[Path], jobs: list[tuple]) -> dict[tuple, dict]:
    """The rows of earlier runs that answer a job: same task, method and seed, at the same epochs."""
    wanted = {(t, m, s, e or TASKS[t][2]): (t, m, s, e) for t, m, s, e in jobs}
    rows = [r for f in files for r in json.loads(f.read_text())["rows"]]
    return {wanted[k]: r for r in rows if (k := (r["task"], r["method"], r["seed"], r["epochs"])) in wanted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="g2,g5,g2-small", help=f"comma-separated, of: {', '.join(TASKS)}")
    ap.add_argument("--suite", action="store_true", help=f"the yardstick suite: {','.join(SUITE)} (replaces --tasks)")
    ap.add_argument("--methods", default="single,single:paper,random,human,kmeans,maxl,maxl:paper,maxl:paper-obj,"
                                         "maxl:nometa")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=0, help="epochs of every task [default: each task's own]")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cost", type=int, default=0, metavar="ROUNDS",
                    help="only time each method's training, interleaved, ROUNDS times (seed 0), against the first")
    ap.add_argument("--rows", type=Path, nargs="*", help="print the tables of earlier --out files instead of running")
    ap.add_argument("--reuse", type=Path, nargs="*", default=[],
                    help="take the rows these earlier --out files hold for a (task, method, seed, epochs) instead "
                         "of training it again (every row is deterministic on the CPU)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: 2 seeds, 4 epochs, task g2-small")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.epochs = "g2-small", 2, 4
    if args.suite:
        args.tasks = ",".join(SUITE)
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        ap.error(f"unknown task {unknown[0]}; known: {', '.join(TASKS)} (or --suite)")
    if args.cost:
        times = cost(args.tasks.split(",")[0], args.methods.split(","), args.cost)
        base = statistics.median(next(iter(times.values())))
        for m, ts in times.items():
            print(f"{m:32s} median {statistics.median(ts):7.1f} s  ({statistics.median(ts) / base:.2f}x)  "
                  f"runs {', '.join(f'{t:.1f}' for t in ts)}")
        return
    if args.rows:
        rows = [r for f in args.rows for r in json.loads(f.read_text())["rows"]]
        print(table(rows) + "\n\n" + calibration(rows) + "\n\n" + comparisons(rows))
        return
    jobs = [(t, m, s, args.epochs) for t in args.tasks.split(",") for m in args.methods.split(",")
            for s in range(args.seeds)]
    write_task_data(args.tasks.split(","))
    t0 = time.perf_counter()
    known = _reusable(args.reuse, jobs)
    todo = [j for j in jobs if j not in known]
    # spawned, not forked: the digit images' writer has run torch in this process, and a fork of it can
    # hang in the children's thread pools
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        fresh = dict(zip(todo, pool.map(run_one, *zip(*todo, strict=True)), strict=True)) if todo else {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")  # which rows were timed together, under one load
    rows = [known.get(j) or {**fresh[j], "run": stamp} for j in jobs]
    length = f"{args.epochs} epochs" if args.epochs else "epochs " + ", ".join(
        f"{t} {TASKS[t][2]}" for t in args.tasks.split(","))
    print(f"# label quality: cnn width {BASE['width']}, batch {BASE['batch_size']}, {length}, "
          f"{args.seeds} seeds ({time.perf_counter() - t0:.0f} s)\n")
    print(table(rows) + "\n\n" + calibration(rows) + "\n\n" + comparisons(rows))
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
