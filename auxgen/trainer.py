"""The training loop around Algorithm 1: set up, then for each epoch a step per batch, an evaluation and a record.

One loop serves every method, so comparisons are fair: the methods differ only in their
`TargetSource`, i.e. where the auxiliary targets of the training step come from (the label
generator, nowhere, fixed hard labels, or frozen soft labels with their stored views).
verify's --retrain and the label-quality benchmark train through this same loop.

Read `train` top to bottom. What one step does is auxgen/steps.py (a regime per method, the batches
and pair views; auxgen/maxl.py is the algorithm itself); what is written into the run folder and read
back on --resume is auxgen/rundir.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from auxgen import distributed
from auxgen.checkpoint import write_json_atomic
from auxgen.compose import build_models, hierarchy_for, load_data, thumbnail_match
from auxgen.config import TrainConfig
from auxgen.data import Data, Split, same_class_neighbours
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy, random_labels
from auxgen.label_stats import in_block_nmi, neighbour_purity
from auxgen.losses import focal_loss
from auxgen.maxl import Nets, grad_cosine
from auxgen.models import MultiTaskNet
from auxgen.progress import TrainProgress, metric_log, tensorboard_writer_class
from auxgen.rundir import Book, RunDir, load_targets, open_book, record_epoch, run_metadata, write_run_files
from auxgen.runtime import Precision, pick_device
from auxgen.steps import (
    BatchSource,
    Epoch,
    Tally,
    TargetSource,
    Training,
    feature_neighbours,
    meta_pass,
    objective_for,
    pick_step,
)

SYNC_EVERY = 10  # steps between host syncs (NaN check, progress); exact step still reported


class Diverged(AuxgenError):
    """The loss became NaN or infinite."""

    exit_code = 1


# One training at a time per process: training uses torch's process-wide state (the global RNG that seeds
# the networks' initialisation and is saved in checkpoints, the one forward-mode AD level of the exact
# meta-gradient), so two at once in threads would give other checkpoints than each alone, or fail. A
# re-entrant lock held for the whole call of train() serialises them (a k-means run's single-task
# pre-training is a call inside one). Train in separate processes to run in parallel.
_TRAINING = threading.RLock()


def _one_at_a_time(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` under _TRAINING: a second thread waits until the first call has returned."""
    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _TRAINING:
            return fn(*args, **kwargs)
    return locked


@_one_at_a_time
def train(cfg: TrainConfig, out: str | Path | None, resume: bool = False, show: bool = True,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None, data: Data | None = None,
          targets: TargetSource | None = None, train_idx: torch.Tensor | None = None,
          return_run: bool = False) -> dict[str, Any]:
    """Train a run into `out` (config.json, metrics.jsonl, checkpoints/); returns the summary.

    With resume=True the run continues from checkpoints/last.pt with every optimiser, schedule
    and RNG state restored, so it ends exactly as an uninterrupted run would (on CPU).
    out=None trains in memory and writes nothing (verify's --retrain, benchmarks); with
    return_run=True the summary carries the trained `Training` under "run". Calls from several threads
    of one process run one at a time (_TRAINING).
    """
    out = None if out is None else Path(out)
    if cfg.log == "tensorboard" and out is not None:
        tensorboard_writer_class()  # installed, or one line saying so, before anything is written
    dist = distributed.init(pick_device(cfg.device))
    dist.check_batch(cfg.batch_size)
    write, show = out is not None and dist.is_main, show and dist.is_main  # rank 0 writes and shows
    rd = RunDir(out) if write else None  # None: nothing is written (in memory, or not rank 0)
    if resume and targets is None and cfg.method == "kmeans":  # goes on with the targets it saved
        data = data or load_data(cfg)
        targets = saved_targets(cfg, out, data)
    tr = setup(cfg, data, targets, train_idx)
    rngs = {"data": torch.Generator().manual_seed(cfg.seed + 2), "aug": torch.Generator().manual_seed(cfg.seed + 3)}
    book = open_book(tr, out, rd is not None, rngs) if resume else Book()
    if rd is not None:
        write_run_files(tr, rd, book.meta or run_metadata(tr))
    B, progress, warned = cfg.batch_size, TrainProgress(cfg.epochs, enabled=show, log_every=cfg.log_every), set()
    with progress, metric_log(cfg.log, out if write else None) as log:
        for epoch in range(book.start_epoch, cfg.epochs + 1):
            t0, order = time.perf_counter(), tr.train_idx[torch.randperm(len(tr.train_idx), generator=rngs["data"])]
            ep, lrs = _start_epoch(tr, epoch, rngs)
            step, tally, cosines = pick_step(cfg, tr.targets), Tally(tr), []
            n_steps = len(order) // B  # drop the last partial batch: batch norm wants full batches
            progress.start_epoch(epoch, n_steps)
            for i in range(n_steps):
                with tr.precision.context():
                    res = step(ep, i, order[i * B:(i + 1) * B])
                    if cfg.cosine_every and res["target"] is not None and book.step % cfg.cosine_every == 0:
                        cosines.append(_grad_cosine(tr, res))  # right after the step, on its batch and targets
                book.step += 1
                tally.add(res)
                if (i + 1) % SYNC_EVERY == 0 or i + 1 == n_steps:
                    _check_finite(tally, i + 1 - len(tally.recent), epoch, n_steps, out)
                    progress.update(i + 1, {"loss": float(tally.sums["pri"]) / (i + 1),
                                            "acc": int(tally.correct) / ((i + 1) * len(res["y"]))})
            if cfg.schedule == "alternate" and tr.targets.kind == "maxl":
                meta_pass(ep, rngs["data"], tally)
                _check_finite(tally, 0, epoch, n_steps, out)
            metrics = _epoch_metrics(tr, epoch, n_steps, tally, lrs, cosines, time.perf_counter() - t0)
            _score_epoch(tr, metrics, progress, warned)
            record_epoch(tr, book, metrics, rngs, rd, judged="val_acc" if len(tr.val_idx) else "test_acc")
            if log is not None:
                log.epoch(metrics)
            dist.barrier()  # no rank runs ahead of the checkpoint a resume would start from
            progress.end_epoch(metrics)
            if on_epoch_end is not None:
                on_epoch_end(metrics)
    return _finish(tr, cfg, out, book, rd, return_run)


# ------------------------------------------------------------------------------ setup
def setup(cfg: TrainConfig, data: Data | None = None, targets: TargetSource | None = None,
          train_idx: torch.Tensor | None = None) -> Training:
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

    rows = torch.arange(len(data.train)) if train_idx is None else train_idx
    _, rows, val_idx = hold_out_val(cfg, data.train.labels, rows)
    train_idx, meta_idx = split_rows(cfg, len(data.train), rows)
    targets = targets or default_targets(cfg, data, hier, human_map, train_idx)
    if (targets.kind == "maxl") != (gen is not None):
        raise AuxgenError("a maxl target source needs --method maxl, and --method maxl needs one")
    targets = TargetSource(targets.kind, None if targets.labels is None else targets.labels.to(device),
                           None if targets.views is None else targets.views.to(device))
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    neighbours = None
    if gen is not None and cfg.pairs == "neighbours":  # among the rows this run may see: training and meta rows
        neighbours = same_class_neighbours(images, labels, torch.cat([train_idx, meta_idx]).to(device), cfg.neighbours,
                                           match=thumbnail_match(cfg, images.shape[1]))
    return Training(cfg, data, hier, device, model, gen, optimizer, gen_optimizer, train_idx, meta_idx,
                    targets, images, labels, precision_of(cfg, device), neighbours, val_idx)


def precision_of(cfg: TrainConfig, device: torch.device) -> Precision:
    return Precision.of(cfg.precision, device)


VAL_DEFAULT, VAL_MIN_CLASS_ROWS = 0.1, 200  # --val-split's default, where every primary class has that many rows
VAL_SEED = 4  # one split for every seed of the same data, so seeds (and verify's retraining) judge on the same rows


def hold_out_val(cfg: TrainConfig, labels: torch.Tensor, rows: torch.Tensor
                 ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """--val-split: the same share of each primary class's rows held out for validation, seeded.

    Returns the fraction (--val-split not given: VAL_DEFAULT where every primary class among `rows` has
    VAL_MIN_CLASS_ROWS, else 0), the rows left for training (in their order) and the validation rows
    (sorted; empty without a split). config.json records the rows; a resume checks it gets the same.
    """
    frac = cfg.val_split
    if frac is None:
        counts = torch.bincount(labels[rows])
        counts = counts[counts > 0]
        frac = VAL_DEFAULT if len(counts) and int(counts.min()) >= VAL_MIN_CLASS_ROWS else 0.0
    if not frac:
        return frac, rows, torch.arange(0)
    g, held = torch.Generator().manual_seed(VAL_SEED), []
    for c in labels[rows].unique().tolist():
        own = rows[labels[rows] == c]
        held.append(own[torch.randperm(len(own), generator=g)[:math.floor(len(own) * frac + 0.5)]])
    val = torch.cat(held).sort().values
    return frac, rows[~torch.isin(rows, val)], val


def split_rows(cfg: TrainConfig, n: int, train_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the training split that train theta1, and rows held out for the meta step (--meta-split).

    Also the check that the data fits the batch size, so a recipe can run it before it touches
    an earlier run in --out.
    """
    rows = torch.arange(n) if train_idx is None else train_idx  # the rows this run may see
    meta_idx = torch.arange(0)
    if cfg.method == "maxl" and cfg.meta_split > 0:  # held out from those rows, never from others
        perm = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed + 1))]
        n_meta = int(round(len(rows) * cfg.meta_split))
        if n_meta < 2 or len(rows) - n_meta < cfg.batch_size:
            raise AuxgenError(f"--meta-split {cfg.meta_split} leaves {n_meta} meta and {len(rows) - n_meta} "
                              f"training samples; need at least 2 and one batch ({cfg.batch_size})")
        meta_idx, rows = perm[:n_meta].sort().values, perm[n_meta:].sort().values
    train_idx = rows
    if len(train_idx) < cfg.batch_size:
        raise AuxgenError(f"{len(train_idx)} training samples is fewer than one batch; lower --batch-size")
    return train_idx, meta_idx


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
        single = dataclasses.replace(cfg, method="single", val_split=0.0)  # train_idx already lacks the val rows
        pre = train(single, None, show=False, data=data, train_idx=train_idx, return_run=True)
        model, device = pre["run"].model, pre["run"].device
    hard, _ = kmeans_labels(features(model, data.train, device), data.train.labels.numpy(), hier, cfg.seed)
    return TargetSource("hard", torch.from_numpy(hard))


def check_features_source(cfg: TrainConfig, data: Data) -> None:
    """--features-from names a run with a last checkpoint whose network took images of this data's shape:
    checked before the run directory is made, so a mismatch leaves nothing behind."""
    if not cfg.features_from:
        return
    from auxgen.run import read_run_config

    flag = f"--features-from {cfg.features_from}"
    try:
        shape = read_run_config(cfg.features_from)["data"].get("image_shape")
    except AuxgenError as e:
        raise AuxgenError(f"{flag}: {e}") from None
    if not RunDir(cfg.features_from).last.is_file():
        raise AuxgenError(f"{flag}: the run has no checkpoints/last.pt (no epoch finished); give a finished run")
    if not isinstance(shape, list) or list(shape) != list(data.image_shape):
        raise AuxgenError(f"{flag} was trained on images of shape {shape} ([C, H, W]) but --dataset {cfg.dataset} "
                          f"gives {list(data.image_shape)}; its features need images like its own: give a run "
                          f"of this data")


def saved_targets(cfg: TrainConfig, out: Path, data: Data) -> TargetSource | None:
    """The targets.npy a k-means run saved, for its --resume: not recomputed from --features-from, whose run
    may have changed or gone since (None when the run has none: they are recomputed)."""
    hier, _ = hierarchy_for(cfg, data)
    hard = load_targets(RunDir(out), data.train.labels, hier.block_id())
    return None if hard is None else TargetSource("hard", hard)


# ------------------------------------------------------------------------------ the epoch
def _start_epoch(tr: Training, epoch: int, rngs: dict[str, torch.Generator]) -> tuple[Epoch, dict[str, float]]:
    """The epoch's learning rates, neighbours (re-mined from features) and the `Epoch` its steps share."""
    cfg = tr.cfg
    # the inner step alpha of the look-ahead is the multi-task network's learning rate of the
    # epoch, so it follows the same schedule; the generator's learning rate does too
    lrs = {"lr": lr_at(cfg.lr, epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs),
           "gen_lr": lr_at(cfg.gen_lr, epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs)}
    _set_lr(tr.optimizer, lrs["lr"])
    _set_lr(tr.gen_optimizer, lrs["gen_lr"])
    if tr.neighbours is not None and cfg.neighbour_match == "features":
        tr.neighbours = feature_neighbours(tr)
    tr.model.train()
    if tr.generator is not None:
        tr.generator.train()
    dist = distributed.current()
    meta_rows = tr.meta_idx[torch.randperm(len(tr.meta_idx), generator=rngs["data"])] if len(tr.meta_idx) \
        else tr.meta_idx
    nets = Nets(tr.model, tr.generator, tr.optimizer, tr.gen_optimizer)
    return Epoch(tr, nets, objective_for(cfg, lrs["lr"], tr.generator), BatchSource(tr, rngs["aug"]),
                 dist.average_ if dist.enabled else None, meta_rows), lrs


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


def _set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    for group in optimizer.param_groups if optimizer is not None else []:
        group["lr"] = lr


def _grad_cosine(tr: Training, res: dict[str, Any]) -> float:
    return grad_cosine(tr.model, res["x"], res["y"], res["target"], tr.cfg.gamma, tr.model.backbone)


def _check_finite(tally: Tally, first: int, epoch: int, n_steps: int, out: Path | None) -> None:
    """Stop on a NaN/Inf loss among the steps since the last check (the first of them: step `first` + 1),
    naming only checkpoints that exist."""
    recent, tally.recent = tally.recent, []
    if not recent:
        return
    bad = (~torch.isfinite(torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in recent]))).nonzero()
    if not len(bad):
        return
    last = None if out is None else RunDir(out).last
    where = (f"the last good checkpoint is {last} (epoch {epoch - 1})" if last is not None and last.is_file()
             else "no checkpoint was written")
    raise Diverged(f"loss became NaN/Inf at epoch {epoch}, step {first + int(bad[0]) + 1}/{n_steps}; stopped; "
                   f"{where}; try a lower --lr or --gen-lr")


def _epoch_metrics(tr: Training, epoch: int, n_steps: int, tally: Tally, lrs: dict[str, float],
                   cosines: list[float], seconds: float) -> dict[str, Any]:
    dist = distributed.current()
    if dist.enabled:  # rank 0 logs global numbers; BN statistics agree before evaluation and checkpoints
        distributed.reduce_epoch(dist, tally.sums, tally.correct, tally.stats, tr.model, tr.generator)
    n, s = max(n_steps, 1), tally.sums
    m: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "lr": lrs["lr"],
                         "train_loss_pri": float(s["pri"]) / n, "train_loss_aux": float(s["aux"]) / n,
                         "train_acc": int(tally.correct) / (n * tr.cfg.batch_size)}
    if tr.targets.kind == "maxl":
        k = tally.meta_steps  # none when the objective has no meta-signal (--meta-weight 0)
        m.update(gen_lr=lrs["gen_lr"], meta_loss_before=float(s["before"]) / k if k else None,
                 meta_loss_after=float(s["after"]) / k if k else None)
    if tr.targets.kind != "none":
        m.update(tally.stats.summary())
    if cosines:
        m["grad_cosine"] = sum(cosines) / len(cosines)
    m["time_s"] = seconds
    return m


def _collapse_warnings(tr: Training, m: dict[str, Any], epoch: int) -> dict[str, str]:
    """The generator's two failure modes (kind -> message), once training is a quarter through (or at the end)."""
    if tr.targets.kind != "maxl" or (epoch <= tr.cfg.epochs / 4 and epoch < tr.cfg.epochs):
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


# ------------------------------------------------------------------------------ evaluation
@torch.inference_mode()
def evaluate(model: MultiTaskNet, split: Split, device: torch.device, batch_size: int,
             gamma: float = 2.0, precision: Precision = Precision()) -> dict[str, float]:
    """Primary-task loss and accuracy on a split, in eval mode, in a fixed order, under the run's precision."""
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    with precision.context():
        for start in range(0, len(split), batch_size):
            x = split.images[start:start + batch_size].to(device)
            y = split.labels[start:start + batch_size].to(device)
            pri, _ = model(x)
            loss_sum += focal_loss(pri, y, gamma) * len(y)
            correct += (pri.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "n": len(split)}


def _score_epoch(tr: Training, metrics: dict[str, Any], progress: TrainProgress, warned: set[str]) -> None:
    """The epoch's validation (with a --val-split) and test loss and accuracy, and its collapse warnings (shown
    once per kind; all in metrics)."""
    cfg = tr.cfg
    if len(tr.val_idx):
        ev = evaluate(tr.model, tr.data.train.subset(tr.val_idx), tr.device, cfg.eval_batch_size, cfg.gamma,
                      tr.precision)
        metrics.update(val_loss=ev["loss"], val_acc=ev["acc"])
    ev = evaluate(tr.model, tr.data.test, tr.device, cfg.eval_batch_size, cfg.gamma, tr.precision)
    metrics.update(test_loss=ev["loss"], test_acc=ev["acc"])
    found = _collapse_warnings(tr, metrics, metrics["epoch"])
    metrics["warnings"] = list(found.values())
    for kind, text in found.items():
        if kind not in warned:
            progress.warn(text)
            warned.add(kind)


# ------------------------------------------------------------------------------ the end
def _finish(tr: Training, cfg: TrainConfig, out: Path | None, book: Book, rd: RunDir | None,
            return_run: bool) -> dict[str, Any]:
    """The run's summary (written to summary.json when the run is written)."""
    last = book.history[-1] if book.history else {}
    best = next((m for m in book.history if m["epoch"] == book.best[1]), {})  # judged on validation, if any
    summary = {"run_dir": None if out is None else str(out), "method": cfg.method, "epochs": len(book.history),
               "final_test_acc": last.get("test_acc"), "best_test_acc": best.get("test_acc", book.best[0]),
               "best_epoch": book.best[1], "best_on": "val_acc" if "val_acc" in best else "test_acc",
               **({"best_val_acc": best["val_acc"], "final_val_acc": last.get("val_acc")} if "val_acc" in best
                  else {}),
               **{k: last.get(k) for k in ("aux_usage_entropy", "aux_usage_entropy_max", "aux_block_usage_frac",
                                           "aux_sample_entropy_frac")},
               "history": [m["test_acc"] for m in book.history]}
    summary.update(label_diagnostics(tr))
    if rd is not None:
        write_json_atomic(rd.summary, summary)
    if return_run:
        summary["run"] = tr
    return summary


@torch.no_grad()
def label_diagnostics(tr: Training) -> dict[str, float | None]:
    """Against the data's fine labels (where it has them): neighbour purity (the share of each row's pair-term
    neighbours in its fine class) and the in-block NMI of the hard auxiliary labels with the fine labels; the
    leading signs that the labels found structure, before retraining on them."""
    fine = tr.data.train.fine
    if fine is None or tr.targets.kind == "none":
        return {}
    rows = torch.cat([tr.train_idx, tr.meta_idx]).sort().values
    out = {"neighbour_purity": None if tr.neighbours is None else neighbour_purity(tr.neighbours, fine, rows)}
    if tr.generator is None:
        labels = tr.targets.labels.cpu()
        hard = (labels.argmax(-1) if labels.dim() > 1 else labels)[rows]
        hard = hard[:, 0] if hard.dim() > 1 else hard  # stored views: the first view's label
    else:
        was = tr.generator.training
        tr.generator.eval()
        with tr.precision.context():
            hard = torch.cat([tr.generator(tr.train_images[i], tr.train_labels[i]).argmax(1).cpu()
                              for i in rows.to(tr.device).split(tr.cfg.eval_batch_size)])
        tr.generator.train(was)
    out["in_block_nmi"] = in_block_nmi(hard, fine[rows], tr.data.train.labels[rows])
    return out
