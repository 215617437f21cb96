"""Probes of what makes frozen labels help, on one label-quality task (default g2-10), paired by seed.

Each probe trains a generator through auxgen's trainer (as benchmarks/label_quality.py does) and
then trains fresh single-task-plus-auxiliary networks on variants of its training-set labels:

  hard      the generator's soft labels against their argmax (one-hot), and psi k-means clusters of
            the raw pixels inside each class (mean-centred, unit norm) as hard labels
  temper    the soft labels at temperature T inside each block (T < 1 sharper, T > 1 softer)
  teacher   an exponential moving average of the generator's weights (decay 0.99) against the live
            generator, with pair labels trained on both sides or with a stop-gradient on the pair

`teacher` patches auxgen.maxl._apply and Epoch.pair inside its worker processes: it probes
ideas without making them options. Usage:

  python benchmarks/label_probes.py hard --seeds 10 --jobs 2 --out docs/label_quality/probe-hard.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import label_quality as lq  # noqa: E402

from auxgen.compose import hierarchy_for, load_data  # noqa: E402
from auxgen.export import compute_soft_labels  # noqa: E402
from auxgen.stats import mean_ci  # noqa: E402
from auxgen.trainer import TargetSource, train  # noqa: E402

DEFAULT = "maxl:nb-cons-nometa-every2"  # today's defaults on greyscale data
EMA_DECAY = 0.99


def _setup(task: str, method: str, seed: int):
    cfg = lq._config(task, method, seed, 0)
    data = load_data(cfg)
    return cfg, data, lq._subset(len(data.train), lq.TASKS[task][1], seed)


def _frozen(cfg, data, idx, kind: str, labels: torch.Tensor) -> float:
    single = dataclasses.replace(cfg, method="single")
    res = train(single, None, show=False, data=data, train_idx=idx, targets=TargetSource(kind, labels))
    return res["final_test_acc"]


def _generator_labels(cfg, data, idx):
    run = train(cfg, None, show=False, data=data, train_idx=idx, return_run=True)["run"]
    return run, compute_soft_labels(run.generator, data.train.images, data.train.labels, run.device)


def pixel_kmeans(data, idx: torch.Tensor, psi: tuple[int, ...], seed: int) -> torch.Tensor:
    """psi[c] k-means clusters of the raw pixels inside each class c, as global auxiliary classes."""
    from sklearn.cluster import KMeans

    z = data.train.images.float().flatten(1).numpy()
    z = z - z.mean(1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True).clip(1e-6)
    hard, ids, y = torch.zeros(len(z), dtype=torch.long), idx.numpy(), data.train.labels.numpy()
    start = np.cumsum([0, *psi])
    for c, k in enumerate(psi):
        rows = ids[y[ids] == c]
        hard[rows] = torch.from_numpy(KMeans(k, n_init=10, random_state=seed).fit_predict(z[rows]) + start[c])
    return hard


def probe_hard(task: str, seed: int) -> dict:
    cfg, data, idx = _setup(task, DEFAULT, seed)
    hier, _ = hierarchy_for(cfg, data)
    _, soft = _generator_labels(cfg, data, idx)
    y, fine = data.train.labels[idx].numpy(), data.train.fine[idx].numpy()
    km = pixel_kmeans(data, idx, hier.psi, seed)
    return {"soft": _frozen(cfg, data, idx, "soft", soft), "argmax": _frozen(cfg, data, idx, "hard", soft.argmax(1)),
            "pixel-kmeans": _frozen(cfg, data, idx, "hard", km),
            "nmi_soft_train": lq._nmi_ari(soft[idx].argmax(1).numpy(), fine, y)[0],
            "nmi_pixel_kmeans_train": lq._nmi_ari(km[idx].numpy(), fine, y)[0]}


def temper(soft: torch.Tensor, t: float) -> torch.Tensor:
    """Soft labels at temperature t inside their block (zeros outside it stay zero)."""
    logits = soft.clamp_min(1e-12).log().div(t).masked_fill(soft <= 0, float("-inf"))
    return torch.softmax(logits, dim=1)


def probe_temper(task: str, seed: int) -> dict:
    cfg, data, idx = _setup(task, DEFAULT, seed)
    _, soft = _generator_labels(cfg, data, idx)
    return {f"T={t}": _frozen(cfg, data, idx, "soft", temper(soft, t)) for t in (0.5, 1.0, 2.0, 4.0)}


STOP_PAIR = {"on": False}  # the teacher probe's switch, read by its patched Epoch.pair
_PATCHED: list[bool] = []   # a worker process runs many seeds: patch it once


def _patch_teacher() -> None:
    import auxgen.maxl as maxl
    import auxgen.trainer as trainer

    if _PATCHED:
        return
    _PATCHED.append(True)
    apply, pair = maxl._apply, trainer.Epoch.pair

    def ema_apply(gen, opt, grads):
        apply(gen, opt, grads)
        with torch.no_grad():
            if not hasattr(gen, "_ema"):
                object.__setattr__(gen, "_ema", [p.detach().clone() for p in gen.parameters()])
            for e, p in zip(gen._ema, gen.parameters(), strict=True):
                e.lerp_(p, 1 - EMA_DECAY)

    def maybe_stopped_pair(self, batch):
        if STOP_PAIR["on"]:
            with torch.no_grad():
                return pair(self, batch)
        return pair(self, batch)

    maxl._apply, trainer.Epoch.pair = ema_apply, maybe_stopped_pair


def probe_teacher(task: str, seed: int) -> dict:
    _patch_teacher()
    out = {}
    arms = (("every2", DEFAULT, False), ("every-step stop-grad pair", "maxl:nb-cons-nometa", True))
    for name, method, stopped in arms:
        STOP_PAIR["on"] = stopped
        cfg, data, idx = _setup(task, method, seed)
        t0 = time.perf_counter()
        run, soft = _generator_labels(cfg, data, idx)
        out[f"{name} train_s"] = time.perf_counter() - t0
        teacher = copy.deepcopy(run.generator)
        with torch.no_grad():
            for p, e in zip(teacher.parameters(), run.generator._ema, strict=True):
                p.copy_(e)
        out[name] = _frozen(cfg, data, idx, "soft", soft)
        ema = compute_soft_labels(teacher, data.train.images, data.train.labels, run.device)
        out[f"{name}, EMA teacher"] = _frozen(cfg, data, idx, "soft", ema)
    return out


PROBES = {"hard": probe_hard, "temper": probe_temper, "teacher": probe_teacher}


def _one(probe: str, task: str, seed: int) -> dict:
    torch.set_num_threads(1)
    return {"probe": probe, "task": task, "seed": seed, **PROBES[probe](task, seed)}


def summary(rows: list[dict], single: dict[int, float]) -> str:
    """Each arm's frozen accuracy minus single-task's of the same seed, in points, with its 95% interval."""
    out = ["| arm | - single (points) | mean |", "| --- | ---: | ---: |"]
    for key in [k for k in rows[0] if k not in ("probe", "task", "seed")]:
        vals = [r[key] for r in rows]
        if key.startswith("nmi") or key.endswith("train_s"):
            out.append(f"| {key} | | {np.mean(vals):.3f} |")
            continue
        d, h = mean_ci([100 * (r[key] - single[r["seed"]]) for r in rows])
        out.append(f"| {key} | {d:+.2f} ± {h:.2f} | {100 * np.mean(vals):.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=sorted(PROBES))
    ap.add_argument("--task", default="g2-10")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--single", type=Path, default=lq.SHAPES.parents[2] / "docs/label_quality/g2-10.json",
                    help="a label_quality.py --out file holding the task's single-task rows (the same seeds)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    single = {r["seed"]: r["acc"] for r in json.loads(args.single.read_text())["rows"]
              if r["task"] == args.task and r["method"] == "single"}
    seeds = list(range(args.seeds))
    if missing := [s for s in seeds if s not in single]:
        sys.exit(f"{args.single} has no single-task row of {args.task} for seeds {missing}; run label_quality.py first")
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_one, [args.probe] * len(seeds), [args.task] * len(seeds), seeds))
    print(f"# probe {args.probe}, task {args.task}, {len(seeds)} seeds, frozen labels\n\n{summary(rows, single)}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
