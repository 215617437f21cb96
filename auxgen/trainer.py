"""The training loop around Algorithm 1: data, schedule, metrics, checkpoints and resume.

One loop serves every method, so comparisons are fair: the methods differ only in their
`TargetSource`, i.e. where the auxiliary targets of the training step come from (the label
generator, nowhere, fixed hard labels, or frozen soft labels with their stored views).
verify's --retrain and the label-quality benchmark train through this same loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import auxgen
from auxgen import distributed
from auxgen.checkpoint import load_checkpoint, save_checkpoint, write_json_atomic, write_text_atomic
from auxgen.config import TrainConfig
from auxgen.data import Data, Split, apply_views, draw_views, load_data
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy, hierarchy_for, random_labels
from auxgen.label_stats import LabelStats
from auxgen.losses import focal_loss
from auxgen.maxl import grad_cosine, maxl_iteration, meta_step, train_step
from auxgen.models import LabelGenerator, MultiTaskNet, build_models
from auxgen.paths import one_line
from auxgen.progress import TrainProgress
from auxgen.rundir import RUN_FILES, RUN_MARKER, TEMP_FILE, RunDir  # noqa: F401  (re-exported names)
from auxgen.runtime import autocast, pick_device

CHECKPOINT_FORMAT = 1
# the run directory's layout, lock and checks live in auxgen.rundir; these names stay for importers
SYNC_EVERY = 10  # steps between host syncs (NaN check, progress); exact step still reported


class Diverged(AuxgenError):
    """The loss became NaN or infinite."""

    exit_code = 1


@dataclass
class TargetSource:
    """Where the training step's auxiliary targets come from.

    kind: "maxl" (the label generator, co-trained), "none" (single-task), "hard" (fixed class
    per row: random, human, kmeans) or "soft" (frozen soft labels, e.g. an export).
    `labels` is indexed by the row of data.train: hard [N] int64, soft [N, K], or with stored
    views soft [N, V, K] and `views` [N, V, 3]; each step then shows a random stored view of
    each image with that view's own label, so a label always matches the image it goes with.
    """

    kind: str
    labels: torch.Tensor | None = None
    views: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("maxl", "none", "hard", "soft"):
            raise ValueError(f"unknown target source {self.kind!r}")
        if (self.labels is None) != (self.kind in ("maxl", "none")):
            raise ValueError(f"a {self.kind!r} target source {'needs' if self.labels is None else 'takes no'} labels")
        if self.views is not None and (self.kind != "soft" or self.labels.dim() != 3):
            raise ValueError("stored views go with soft labels of shape [N, V, K]")


def lr_at(base: float, epoch: int, epochs: int, schedule: str = "step", warmup: int = 0) -> float:
    """Learning rate of a 1-based epoch.

    step: the paper halves every 50 of 200 epochs; for other lengths, halve at 25%, 50%, 75%.
    cosine: linear warm-up over `warmup` epochs, then cosine decay towards zero at the end.
    """
    if schedule == "cosine":
        if epoch <= warmup:
            return base * epoch / (warmup + 1)
        return base * 0.5 * (1 + math.cos(math.pi * (epoch - warmup - 1) / max(epochs - warmup, 1)))
    milestones = [math.ceil(epochs * q / 4) for q in (1, 2, 3)]
    return base * 0.5 ** sum(epoch > m for m in milestones if m > 0)


@torch.inference_mode()
def evaluate(model: MultiTaskNet, split: Split, device: torch.device, batch_size: int,
             gamma: float = 2.0, bf16: bool = False) -> dict[str, float]:
    """Primary-task loss and accuracy on a split, in eval mode, in a fixed order, under the run's precision."""
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    with autocast(bf16, device):
        for start in range(0, len(split), batch_size):
            x = split.images[start:start + batch_size].to(device)
            y = split.labels[start:start + batch_size].to(device)
            pri, _ = model(x)
            loss_sum += focal_loss(pri, y, gamma) * len(y)
            correct += (pri.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "n": len(split)}


@dataclass
class Run:
    """Everything a training run holds in memory."""

    cfg: TrainConfig
    data: Data
    hier: Hierarchy
    device: torch.device
    model: MultiTaskNet
    generator: LabelGenerator | None
    optimizer: torch.optim.Optimizer
    gen_optimizer: torch.optim.Optimizer | None
    train_idx: torch.Tensor   # rows of data.train that train theta1
    meta_idx: torch.Tensor    # rows held out for the meta step (empty: reuse training batches)
    targets: TargetSource     # labels and views on the device
    train_images: torch.Tensor      # data.train on the device
    train_labels: torch.Tensor


def default_targets(cfg: TrainConfig, data: Data, hier: Hierarchy, human_map: torch.Tensor | None,
                    train_idx: torch.Tensor | None = None) -> TargetSource:
    """The target source a method names: maxl, single, or fixed random / human / k-means labels."""
    if cfg.method == "maxl":
        return TargetSource("maxl")
    if cfg.method == "single":
        return TargetSource("none")
    if cfg.method == "random":  # drawn once from the seed: a fixed random class inside each sample's true block
        return TargetSource("hard", random_labels(hier, data.train.labels, torch.Generator().manual_seed(cfg.seed + 1)))
    if cfg.method == "human":
        return TargetSource("hard", human_map[data.train.fine])
    if cfg.method == "kmeans":
        return kmeans_targets(cfg, data, hier, train_idx)
    raise AuxgenError(f"method {cfg.method!r} needs its targets passed in")


def kmeans_targets(cfg: TrainConfig, data: Data, hier: Hierarchy, train_idx: torch.Tensor | None = None
                   ) -> TargetSource:
    """--method kmeans: hard labels from k-means inside each primary class on single-task features.

    The features come from --features-from RUN, or from a single-task network trained here first
    with the same options and seed (in memory), so the run stays reproducible from its config.
    """
    from auxgen.kmeans import features, kmeans_labels

    if cfg.features_from:
        from auxgen.run import load_run

        model, device = load_run(cfg.features_from, "last", device=cfg.device).model, pick_device(cfg.device)
    else:
        pre = train(dataclasses.replace(cfg, method="single"), None, show=False, data=data, train_idx=train_idx,
                    return_run=True)
        model, device = pre["run"].model, pre["run"].device
    hard, _ = kmeans_labels(features(model, data.train, device), data.train.labels.numpy(), hier, cfg.seed)
    return TargetSource("hard", torch.from_numpy(hard))


def split_rows(cfg: TrainConfig, n: int, train_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the training split that train theta1, and rows held out for the meta step (--meta-split).

    Also the check that the data fits the batch size, so a recipe can run it before it touches
    an earlier run in --out.
    """
    if cfg.method == "maxl" and cfg.meta_split > 0:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))
        n_meta = int(round(n * cfg.meta_split))
        if n_meta < 2 or n - n_meta < cfg.batch_size:
            raise AuxgenError(f"--meta-split {cfg.meta_split} leaves {n_meta} meta and {n - n_meta} "
                              f"training samples; need at least 2 and one batch ({cfg.batch_size})")
        meta_idx, train_idx = perm[:n_meta].sort().values, perm[n_meta:].sort().values
    else:
        train_idx, meta_idx = (torch.arange(n) if train_idx is None else train_idx), torch.arange(0)
    if len(train_idx) < cfg.batch_size:
        raise AuxgenError(f"{len(train_idx)} training samples is fewer than one batch; lower --batch-size")
    return train_idx, meta_idx


def setup(cfg: TrainConfig, data: Data | None = None, targets: TargetSource | None = None,
          train_idx: torch.Tensor | None = None) -> Run:
    """Load data, build models and optimisers from a seed.

    `targets` overrides the method's own target source (verify's --retrain passes frozen
    labels); `train_idx` restricts training to those rows of data.train.
    """
    device = distributed.current().device(pick_device(cfg.device))
    data = data or load_data(cfg)
    hier, human_map = hierarchy_for(cfg, data)
    torch.manual_seed(cfg.seed)
    model, gen = build_models(cfg, data.image_shape[0], hier)
    model = distributed.convert_sync_bn(model, cfg, device)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    gen_optimizer = None
    if gen is not None:
        gen.to(device)
        l2 = cfg.gen_weight_decay if cfg.gen_decay == "l2" else 0.0
        opt = torch.optim.Adam if cfg.gen_optimizer == "adam" else torch.optim.SGD
        gen_optimizer = opt(gen.parameters(), lr=cfg.gen_lr, weight_decay=l2)

    train_idx, meta_idx = split_rows(cfg, len(data.train), train_idx)
    targets = targets or default_targets(cfg, data, hier, human_map, train_idx)
    if (targets.kind == "maxl") != (gen is not None):
        raise AuxgenError("a maxl target source needs --method maxl, and --method maxl needs one")
    targets = TargetSource(targets.kind, None if targets.labels is None else targets.labels.to(device),
                           None if targets.views is None else targets.views.to(device))
    return Run(cfg, data, hier, device, model, gen, optimizer, gen_optimizer, train_idx, meta_idx,
               targets, data.train.images.to(device), data.train.labels.to(device))


def run_metadata(run: Run) -> dict[str, Any]:
    """What config.json records besides the options: versions, psi, data fingerprint."""
    d = run.data
    return {
        "train": run.cfg.to_dict(),
        "psi": list(run.hier.psi),
        "num_primary": run.hier.num_primary,
        "num_aux": run.hier.num_aux,
        "seed": run.cfg.seed,
        "auxgen_version": auxgen.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(run.device),
        "data": {
            "name": d.name, "fingerprint": d.fingerprint(),
            "train_fingerprint": d.split_fingerprint("train"), "test_fingerprint": d.split_fingerprint("test"),
            "num_train": len(d.train), "num_test": len(d.test), "num_meta": len(run.meta_idx),
            "image_shape": list(d.image_shape), "class_names": d.class_names,
            "fine_names": d.fine_names, "augment": d.augment, "pad": d.pad, "flip": d.flip,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds an auxgen run: the marker file only auxgen writes."""
    return RunDir(path).is_run


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder unless --force names an earlier auxgen run (only its own files go)."""
    RunDir(out).prepare(force)


def _state(run: Run, epoch: int, step: int, gens: dict[str, torch.Generator],
           history: list[dict[str, Any]], best: tuple[float, int]) -> dict[str, Any]:
    rng = {k: g.get_state() for k, g in gens.items()}
    rng["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "global_step": step,
        "psi": list(run.hier.psi), "dataset": run.data.name,
        "data_fingerprint": run.data.fingerprint(),
        "model": run.model.state_dict(),
        "generator": run.generator.state_dict() if run.generator is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "gen_optimizer": run.gen_optimizer.state_dict() if run.gen_optimizer is not None else None,
        "rng": rng, "history": history, "best_acc": best[0], "best_epoch": best[1],
        "test_acc": history[-1]["test_acc"] if history else None,
    }


def _restore(run: Run, out: Path, gens: dict[str, torch.Generator]) -> tuple[list[dict], tuple[float, int], int, int]:
    """Load checkpoints/last.pt into the run; (history, best, next epoch, global step)."""
    rd = RunDir(out)
    last = rd.last
    if not last.is_file():
        if rd.metrics.is_file() and rd.metrics.read_text().strip():
            raise AuxgenError(f"--resume {out}: metrics.jsonl records finished epochs but checkpoints/last.pt is "
                              f"missing; the run cannot continue (start a new one)")
        print(f"note: {out} has no checkpoints/last.pt (no epoch finished); starting from epoch 1", file=sys.stderr)
        return [], (-1.0, 0), 1, 0
    state = load_checkpoint(last)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt has checkpoint format {state.get('format')!r}; this "
                          f"auxgen (version {auxgen.__version__}) reads format {CHECKPOINT_FORMAT}")
    if state.get("psi") != list(run.hier.psi):
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt has psi {state.get('psi')} but config.json gives "
                          f"{list(run.hier.psi)}; config.json no longer matches the checkpoint")
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.generator is not None:
            run.generator.load_state_dict(state["generator"])
            run.gen_optimizer.load_state_dict(state["gen_optimizer"])
        for k, g in gens.items():
            g.set_state(state["rng"][k])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt does not fit the run's config.json "
                          f"({one_line(e, 160)}); was config.json edited?") from None
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["history"], (state["best_acc"], state["best_epoch"]), state["epoch"] + 1, state["global_step"]


def train(cfg: TrainConfig, out: str | Path | None, resume: bool = False, show: bool = True,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None, data: Data | None = None,
          targets: TargetSource | None = None, train_idx: torch.Tensor | None = None,
          return_run: bool = False) -> dict[str, Any]:
    """Train a run into `out` (config.json, metrics.jsonl, checkpoints/); returns the summary.

    With resume=True the run continues from checkpoints/last.pt with every optimiser, schedule
    and RNG state restored, so it ends exactly as an uninterrupted run would (on CPU).
    out=None trains in memory and writes nothing (verify's --retrain, benchmarks); with
    return_run=True the summary carries the trained `Run` under "run".
    """
    out = None if out is None else Path(out)
    rd = None if out is None else RunDir(out)
    dist = distributed.init(pick_device(cfg.device))
    dist.check_batch(cfg.batch_size)
    write, show = out is not None and dist.is_main, show and dist.is_main  # rank 0 writes and shows
    run = setup(cfg, data, targets, train_idx)
    meta = run_metadata(run)
    gens = {"data": torch.Generator().manual_seed(cfg.seed + 2),
            "aug": torch.Generator().manual_seed(cfg.seed + 3)}
    history: list[dict[str, Any]] = []
    best, start_epoch, step = (-1.0, 0), 1, 0
    if resume:
        saved = json.loads(rd.config.read_text())
        if saved["data"]["fingerprint"] != meta["data"]["fingerprint"]:
            raise AuxgenError(f"the dataset differs from the one {out} was trained on "
                              f"(fingerprint mismatch); resume needs the same data")
        meta = saved
        history, best, start_epoch, step = _restore(run, out, gens)
    if write:
        write_json_atomic(rd.config, meta)
        write_text_atomic(rd.marker, f"auxgen run directory (auxgen {auxgen.__version__})\n")

    progress = TrainProgress(cfg.epochs, enabled=show)
    warned: set[str] = set()
    with progress:
        for epoch in range(start_epoch, cfg.epochs + 1):
            metrics, step = _train_epoch(run, epoch, step, gens, progress, out)
            ev = evaluate(run.model, run.data.test, run.device, cfg.eval_batch_size, cfg.gamma, cfg.bf16)
            metrics.update(test_loss=ev["loss"], test_acc=ev["acc"])
            found = _collapse_warnings(run, metrics, epoch)
            metrics["warnings"] = list(found.values())
            for kind, text in found.items():  # once per kind on screen; every epoch's are in metrics.jsonl
                if kind not in warned:
                    progress.warn(text)
                    warned.add(kind)
            history.append(metrics)
            improved = metrics["test_acc"] > best[0]
            if improved:
                best = (metrics["test_acc"], epoch)
            if write:
                state = _state(run, epoch, step, gens, history, best)
                if improved:  # before last.pt, the commit point resume trusts: a kill between leaves both consistent
                    save_checkpoint(state, rd.best)
                save_checkpoint(state, rd.last)
                write_text_atomic(rd.metrics, "".join(json.dumps(m) + "\n" for m in history))
            dist.barrier()  # no rank runs ahead of the checkpoint a resume would start from
            progress.end_epoch(metrics)
            if on_epoch_end is not None:
                on_epoch_end(metrics)
    last = history[-1] if history else {}
    summary = {"run_dir": None if out is None else str(out), "method": cfg.method, "epochs": len(history),
               "final_test_acc": last.get("test_acc"), "best_test_acc": best[0], "best_epoch": best[1],
               **{k: last.get(k) for k in ("aux_usage_entropy", "aux_usage_entropy_max", "aux_block_usage_frac",
                                           "aux_sample_entropy_frac")},
               "history": [m["test_acc"] for m in history]}
    if write:
        write_json_atomic(rd.summary, summary)
    if return_run:
        summary["run"] = run
    return summary


def _set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    for group in optimizer.param_groups if optimizer is not None else []:
        group["lr"] = lr


def _train_epoch(run: Run, epoch: int, step: int, gens: dict[str, torch.Generator],
                 progress: TrainProgress, out: Path | None) -> tuple[dict[str, Any], int]:
    cfg, data, dev, hier, src = run.cfg, run.data, run.device, run.hier, run.targets
    # the inner step alpha of the look-ahead is the multi-task network's learning rate of the
    # epoch, so it follows the same schedule; the generator's learning rate does too
    lr = lr_at(cfg.lr, epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs)
    gen_lr = lr_at(cfg.gen_lr, epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs)
    _set_lr(run.optimizer, lr)
    _set_lr(run.gen_optimizer, gen_lr)
    l1 = cfg.gen_weight_decay if cfg.gen_decay == "l1" else 0.0  # l2 is in the optimiser
    run.model.train()
    if run.generator is not None:
        run.generator.train()
    maxl = src.kind == "maxl"
    alternate = maxl and cfg.schedule == "alternate"
    dist = distributed.current()
    reduce = dist.average_ if dist.enabled else None  # gradients averaged over the processes

    # the training set lives on the device (put there once per run): batches and augmentation
    # never cross the host-device boundary
    B, images, labels = cfg.batch_size, run.train_images, run.train_labels
    order = run.train_idx[torch.randperm(len(run.train_idx), generator=gens["data"])]
    n_steps = len(order) // B  # drop the last partial batch: batch norm wants full batches
    meta_order = (run.meta_idx[torch.randperm(len(run.meta_idx), generator=gens["data"])]
                  if len(run.meta_idx) else None)

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (augmented), primary labels and fixed targets of this process's share of the rows `idx`."""
        # random draws are made for the whole global batch, so every process's generators stay in step
        part = dist.part(len(idx))
        n, idx = len(idx), idx[part].to(dev)
        x, target = images[idx], None
        if src.views is not None:  # a random stored view per row, with that view's label
            v = torch.randint(0, src.views.shape[1], (n,), generator=gens["aug"])[part].to(dev)
            x = apply_views(x, src.views[idx, v], data.pad)
            target = src.labels[idx, v]
        else:
            if data.augment:  # views are drawn on the CPU generator, so runs replay on any device
                x = apply_views(x, draw_views(n, data.pad, gens["aug"], data.flip)[part], data.pad)
            if src.kind == "hard":
                target = F.one_hot(src.labels[idx], hier.num_aux).float()
            elif src.kind == "soft":
                target = src.labels[idx].float()
        return x, labels[idx], target

    sums = {k: torch.zeros((), device=dev) for k in ("pri", "aux", "before", "after")}
    correct = torch.zeros((), dtype=torch.long, device=dev)
    stats = LabelStats(hier.psi, dev)
    cosines: list[float] = []
    recent: list[torch.Tensor] = []
    t0 = time.perf_counter()
    progress.start_epoch(epoch, n_steps)
    amp = autocast(cfg.bf16, dev)
    maxl_args = dict(alpha=lr, gamma=cfg.gamma, entropy_weight=cfg.entropy_weight, order=cfg.meta_order,
                     l1_decay=l1, usage=cfg.usage_entropy, sharpness_weight=cfg.sharpness_weight,
                     meta_scale=cfg.meta_weight / (lr if cfg.meta_norm == "alpha" else 1.0), reduce=reduce)

    def pair(xx: torch.Tensor, yy: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's labels of a shifted copy of the batch, for the consistency term."""
        if not cfg.consistency_weight:
            return {}
        n = len(xx) * dist.world  # drawn for the global batch, like batch()'s views
        shifted = apply_views(xx, draw_views(n, data.pad, gens["aug"], data.flip)[dist.part(n)], data.pad)
        return {"pair_labels": run.generator(shifted, yy), "consistency_weight": cfg.consistency_weight}

    for i in range(n_steps):
        x, y, target = batch(order[i * B:(i + 1) * B])
        with amp:
            if maxl and not alternate:
                meta_batch = None
                if meta_order is not None:
                    meta_batch = batch(meta_order[(i * B + torch.arange(B)) % len(meta_order)])[:2]
                res = maxl_iteration(run.model, run.generator, run.optimizer, run.gen_optimizer, x, y,
                                     meta_batch=meta_batch, fused=cfg.fused_lookahead, **maxl_args,
                                     **(pair(x, y) if meta_batch is None else {}))
                loss_pri, loss_aux, ok, target = res["loss_pri"], res["loss_aux"], res["correct"], res["target"]
                sums["before"] += res["meta_before"]
                sums["after"] += res["meta_after"]
            else:
                if maxl:  # alternate: this pass trains theta1 only, on the generator's current labels
                    with torch.no_grad():
                        target = run.generator(x, y)
                loss_pri, loss_aux, ok = train_step(run.model, run.optimizer, x, y, target, cfg.gamma, reduce=reduce)
            if cfg.cosine_every and target is not None and step % cfg.cosine_every == 0:
                # measured right after the step, on the same batch and targets
                cosines.append(grad_cosine(run.model, x, y, target, cfg.gamma, run.model.backbone))
        step += 1
        sums["pri"] += loss_pri
        sums["aux"] += loss_aux
        correct += ok
        recent.append(loss_pri + loss_aux + (res["meta_after"] if maxl and not alternate else 0.0))
        if target is not None:
            stats.add(target, y)
        if (i + 1) % SYNC_EVERY == 0 or i + 1 == n_steps:
            _check_finite(recent, i + 1 - len(recent), epoch, n_steps, out)
            recent = []
            progress.update(i + 1, {"loss": float(sums["pri"]) / (i + 1), "acc": int(correct) / ((i + 1) * len(y))})

    if alternate:  # the authors' code: a separate, reshuffled pass of meta steps from the trained theta1
        meta_rows = run.train_idx if meta_order is None else run.meta_idx
        meta_order = meta_rows[torch.randperm(len(meta_rows), generator=gens["data"])]
        for i in range(len(meta_order) // B):
            mx, my, _ = batch(meta_order[i * B:(i + 1) * B])
            with amp:
                before, after = meta_step(run.model, run.generator, run.gen_optimizer, mx, my, run.generator(mx, my),
                                          **maxl_args, **pair(mx, my))
            sums["before"] += before
            sums["after"] += after
            recent.append(after)
        _check_finite(recent, 0, epoch, n_steps, out)

    if dist.enabled:  # rank 0 logs global numbers; BN statistics agree before evaluation and checkpoints
        distributed.reduce_epoch(dist, sums, correct, stats, run.model, run.generator)
    n = max(n_steps, 1)
    m: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "lr": lr,
                         "train_loss_pri": float(sums["pri"]) / n, "train_loss_aux": float(sums["aux"]) / n,
                         "train_acc": int(correct) / (n * B)}
    if maxl:
        m_steps = n if not alternate else max(len(meta_order) // B, 1)
        m.update(gen_lr=gen_lr, meta_loss_before=float(sums["before"]) / m_steps,
                 meta_loss_after=float(sums["after"]) / m_steps)
    if src.kind != "none":
        m.update(stats.summary())
    if cosines:
        m["grad_cosine"] = sum(cosines) / len(cosines)
    m["time_s"] = time.perf_counter() - t0
    return m, step


def _check_finite(recent: list[torch.Tensor], first: int, epoch: int, n_steps: int, out: Path | None) -> None:
    """Stop on a NaN/Inf loss, naming only checkpoints that exist."""
    if not recent:
        return
    bad = (~torch.isfinite(torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in recent]))).nonzero()
    if not len(bad):
        return
    last = None if out is None else out / "checkpoints" / "last.pt"
    where = (f"the last good checkpoint is {last} (epoch {epoch - 1})" if last is not None and last.is_file()
             else "no checkpoint was written")
    raise Diverged(f"loss became NaN/Inf at epoch {epoch}, step {first + int(bad[0]) + 1}/{n_steps}; stopped; "
                   f"{where}; try a lower --lr or --gen-lr")


def _collapse_warnings(run: Run, m: dict[str, Any], epoch: int) -> dict[str, str]:
    """The generator's two failure modes (kind -> message), once training is a quarter through (or at the end)."""
    if run.targets.kind != "maxl" or (epoch <= run.cfg.epochs / 4 and epoch < run.cfg.epochs):
        return {}
    out = {}
    block = m.get("aux_block_usage_frac")
    if block is not None and block < 0.5:
        out["collapse"] = (f"auxiliary classes collapsing: usage inside each primary class's block is "
                           f"{100 * block:.1f}% of its maximum entropy; consider a larger --entropy-weight")
    if m["aux_sample_entropy_frac"] is not None and m["aux_sample_entropy_frac"] > 0.95:
        out["uniform"] = (f"soft labels nearly uniform inside their blocks (per-sample entropy "
                          f"{100 * m['aux_sample_entropy_frac']:.1f}% of its maximum): the auxiliary task adds little "
                          f"beyond the primary labels; measure its value with `auxgen verify --retrain`")
    return out
