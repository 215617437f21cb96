"""The training loop around Algorithm 1: data, schedule, metrics, checkpoints and resume.

One loop serves every method, so comparisons are fair: the methods differ only in their
`TargetSource`, i.e. where the auxiliary targets of the training step come from (the label
generator, nowhere, fixed hard labels, or frozen soft labels with their stored views).
verify's --retrain and the label-quality benchmark train through this same loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

import auxgen
from auxgen import distributed
from auxgen.checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json_atomic, write_text_atomic
from auxgen.compose import build_models, hierarchy_for, load_data, pair_colour_on, thumbnail_match
from auxgen.config import TrainConfig
from auxgen.data import Data, Split, apply_views, colour_jitter, draw_views, nearest_of_class, same_class_neighbours
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy, random_labels
from auxgen.label_stats import LabelStats
from auxgen.losses import focal_loss
from auxgen.maxl import (
    Nets,
    Objective,
    Reduce,
    fused_iteration,
    grad_cosine,
    implicit_step,
    maxl_iteration,
    meta_step,
    train_step,
)
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.paths import one_line
from auxgen.progress import TrainProgress, metric_log, tensorboard_writer_class
from auxgen.rundir import RUN_FILES, RUN_MARKER, TEMP_FILE, RunDir  # noqa: F401  (re-exported names)
from auxgen.runtime import Precision, pick_device

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
    precision: Precision
    neighbours: torch.Tensor | None = None  # --pairs neighbours: [N, k] same-class nearest rows, on the device


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


def save_targets(path: Path, labels: torch.Tensor) -> None:
    """The training split's hard targets [N] as an int64 .npy file (written atomically)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the temporary name
            np.save(f, labels.cpu().numpy().astype(np.int64), allow_pickle=False)

    atomic_write(path, write)


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
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    neighbours = None
    if gen is not None and cfg.pairs == "neighbours":  # among the rows this run may see: training and meta rows
        neighbours = same_class_neighbours(images, labels, torch.cat([train_idx, meta_idx]).to(device), cfg.neighbours,
                                           match=thumbnail_match(cfg, images.shape[1]))
    return Run(cfg, data, hier, device, model, gen, optimizer, gen_optimizer, train_idx, meta_idx,
               targets, images, labels, precision_of(cfg, device), neighbours)


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


def _state(run: Run, epoch: int, step: int, rngs: dict[str, torch.Generator],
           history: list[dict[str, Any]], best: tuple[float, int]) -> dict[str, Any]:
    rng = {k: g.get_state() for k, g in rngs.items()}
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


def _restore(run: Run, out: Path, rngs: dict[str, torch.Generator]) -> tuple[list[dict], tuple[float, int], int, int]:
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
        for k, g in rngs.items():
            g.set_state(state["rng"][k])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt does not fit the run's config.json "
                          f"({one_line(e, 160)}); was config.json edited?") from None
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["history"], (state["best_acc"], state["best_epoch"]), state["epoch"] + 1, state["global_step"]


def _resume_epochs(meta: dict[str, Any], cfg: TrainConfig, done: int, rd: RunDir, write: bool) -> None:
    """--resume with another --epochs: at least the finished ones; config.json records the new count."""
    saved = meta["train"].get("epochs")
    if cfg.epochs == saved:
        return
    if cfg.epochs < done:
        raise AuxgenError(f"--epochs {cfg.epochs} is fewer than the {done} epochs {rd.path} has finished; give "
                          f"--epochs {done} or more")
    if write:
        print(f"note: {rd.path} now trains for {cfg.epochs} epochs (was {saved}); the learning-rate schedule "
              f"stretches to {cfg.epochs} epochs from epoch {done + 1} on (finished epochs keep theirs)",
              file=sys.stderr)
        if rd.summary.is_file():  # the run is no longer finished until its new last epoch is
            rd.summary.unlink()
    meta["train"]["epochs"] = cfg.epochs


_TRAINING = threading.RLock()  # see train(): one training at a time per process


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
    return_run=True the summary carries the trained `Run` under "run".

    Calls from several threads of one process run one at a time: training uses torch's process-wide
    state (the global RNG that seeds the networks' initialisation and is saved in checkpoints, the one
    forward-mode AD level of the exact meta-gradient), so two at once would give other checkpoints
    than each alone, or fail. A re-entrant lock held for the whole call serialises them (a k-means
    run's single-task pre-training is a call inside one). Train in separate processes to run in parallel.
    """
    out = None if out is None else Path(out)
    if cfg.log == "tensorboard" and out is not None:
        tensorboard_writer_class()  # installed, or one line saying so, before anything is written
    dist = distributed.init(pick_device(cfg.device))
    dist.check_batch(cfg.batch_size)
    write, show = out is not None and dist.is_main, show and dist.is_main  # rank 0 writes and shows
    rd = RunDir(out) if write else None  # None: nothing is written (in memory, or not rank 0)
    run = setup(cfg, data, targets, train_idx)
    rngs = {"data": torch.Generator().manual_seed(cfg.seed + 2),
            "aug": torch.Generator().manual_seed(cfg.seed + 3)}
    book = _open_book(run, out, rd, rngs) if resume else Book()
    if rd is not None:
        _write_run_files(run, rd, book.meta or run_metadata(run))

    progress = TrainProgress(cfg.epochs, enabled=show, log_every=cfg.log_every)
    warned: set[str] = set()
    with progress, metric_log(cfg.log, out if write else None) as log:
        for epoch in range(book.start_epoch, cfg.epochs + 1):
            metrics, book.step = _train_epoch(run, epoch, book.step, rngs, progress, out)
            _evaluate(run, metrics, epoch, progress, warned)
            _record(run, book, metrics, epoch, rngs, rd)
            if log is not None:
                log.epoch(metrics)
            dist.barrier()  # no rank runs ahead of the checkpoint a resume would start from
            progress.end_epoch(metrics)
            if on_epoch_end is not None:
                on_epoch_end(metrics)
    summary = _summary(cfg, out, book)
    if rd is not None:
        write_json_atomic(rd.summary, summary)
    if return_run:
        summary["run"] = run
    return summary


@dataclass
class Book:
    """What a run has recorded so far: its epochs' metrics, its best (test accuracy, epoch), where it goes on
    (epoch and global step), and a resumed run's saved config.json (None for a new run)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, int] = (-1.0, 0)
    start_epoch: int = 1
    step: int = 0
    meta: dict[str, Any] | None = None


def _open_book(run: Run, out: Path, rd: RunDir | None, rngs: dict[str, torch.Generator]) -> Book:
    """A resumed run's record, its networks, optimisers and RNGs restored from checkpoints/last.pt."""
    saved = json.loads(RunDir(out).config.read_text())
    if saved["data"]["fingerprint"] != run_metadata(run)["data"]["fingerprint"]:
        raise AuxgenError(f"the dataset differs from the one {out} was trained on "
                          f"(fingerprint mismatch); resume needs the same data")
    history, best, start_epoch, step = _restore(run, out, rngs)
    _resume_epochs(saved, run.cfg, start_epoch - 1, RunDir(out), rd is not None)
    return Book(history, best, start_epoch, step, saved)


def _write_run_files(run: Run, rd: RunDir, meta: dict[str, Any]) -> None:
    write_json_atomic(rd.config, meta)
    write_text_atomic(rd.marker, f"auxgen run directory (auxgen {auxgen.__version__})\n")
    if run.cfg.method == "kmeans":  # their recomputation trains a network: keep them for export
        save_targets(rd.targets, run.targets.labels)


def _evaluate(run: Run, metrics: dict[str, Any], epoch: int, progress: TrainProgress, warned: set[str]) -> None:
    """The epoch's test loss and accuracy, and its collapse warnings (shown once per kind; all in metrics)."""
    cfg = run.cfg
    ev = evaluate(run.model, run.data.test, run.device, cfg.eval_batch_size, cfg.gamma, run.precision)
    metrics.update(test_loss=ev["loss"], test_acc=ev["acc"])
    found = _collapse_warnings(run, metrics, epoch)
    metrics["warnings"] = list(found.values())
    for kind, text in found.items():
        if kind not in warned:
            progress.warn(text)
            warned.add(kind)


def _record(run: Run, book: Book, metrics: dict[str, Any], epoch: int, rngs: dict[str, torch.Generator],
            rd: RunDir | None) -> None:
    """Add the epoch to the book and, when the run is written, to its checkpoints and metrics.jsonl."""
    book.history.append(metrics)
    improved = metrics["test_acc"] > book.best[0]
    if improved:
        book.best = (metrics["test_acc"], epoch)
    if rd is None:
        return
    state = _state(run, epoch, book.step, rngs, book.history, book.best)
    if improved:  # before last.pt, the commit point resume trusts: a kill between leaves both consistent
        save_checkpoint(state, rd.best)
    save_checkpoint(state, rd.last)
    write_text_atomic(rd.metrics, "".join(json.dumps(m) + "\n" for m in book.history))


def _summary(cfg: TrainConfig, out: Path | None, book: Book) -> dict[str, Any]:
    last = book.history[-1] if book.history else {}
    return {"run_dir": None if out is None else str(out), "method": cfg.method, "epochs": len(book.history),
            "final_test_acc": last.get("test_acc"), "best_test_acc": book.best[0], "best_epoch": book.best[1],
            **{k: last.get(k) for k in ("aux_usage_entropy", "aux_usage_entropy_max", "aux_block_usage_frac",
                                        "aux_sample_entropy_frac")},
            "history": [m["test_acc"] for m in book.history]}


def _set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    for group in optimizer.param_groups if optimizer is not None else []:
        group["lr"] = lr


def objective_for(cfg: TrainConfig, alpha: float, generator: torch.nn.Module | None = None) -> Objective:
    """The epoch's Objective: every field the config shares by name, alpha the epoch's learning rate, and the
    generator's learned loss weighting (--aux-weighting learned) if it has one."""
    shared = {f.name for f in dataclasses.fields(Objective)} & {f.name for f in dataclasses.fields(cfg)}
    l1 = cfg.gen_weight_decay if cfg.gen_decay == "l1" else 0.0  # l2 is in the generator's optimiser
    return Objective(alpha=alpha, gen_l1=l1, weighting=getattr(generator, "loss_weighting", None),
                     **{n: getattr(cfg, n) for n in shared})


def precision_of(cfg: TrainConfig, device: torch.device) -> Precision:
    return Precision.of(cfg.precision, device)


class Batch(NamedTuple):
    """This process's share of a batch: images, primary labels, fixed targets (or None) and their rows."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    idx: torch.Tensor


class Batches:
    """Rows of data.train -> this process's share of (images, primary labels, fixed targets) on the device.

    The training set lives on the device (put there once per run): batches and augmentation
    never cross the host-device boundary. Random draws are made for the whole global batch on
    CPU generators, so every process stays in step and runs replay on any device.
    """

    def __init__(self, run: Run, rng: torch.Generator) -> None:
        self.run, self.rng, self.dist = run, rng, distributed.current()
        self.colour = pair_colour_on(run.cfg, run.train_images.shape[1])

    def __call__(self, rows: torch.Tensor) -> Batch:
        run, src, data = self.run, self.run.targets, self.run.data
        part = self.dist.part(len(rows))
        n, idx = len(rows), rows[part].to(run.device)
        x, target = run.train_images[idx], None
        if src.views is not None:  # a random stored view per row, with that view's label
            v = torch.randint(0, src.views.shape[1], (n,), generator=self.rng)[part].to(run.device)
            return Batch(apply_views(x, src.views[idx, v], data.pad), run.train_labels[idx], src.labels[idx, v], idx)
        if data.augment:
            x = self.view(x, n)
        if src.kind == "hard":
            target = F.one_hot(src.labels[idx], run.hier.num_aux).float()
        elif src.kind == "soft":
            target = src.labels[idx].float()
        return Batch(x, run.train_labels[idx], target, idx)

    def view(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """A random crop-and-flip view of this process's images x (n: the global batch size)."""
        n = n or len(x) * self.dist.world
        data = self.run.data
        return apply_views(x, draw_views(n, data.pad, self.rng, data.flip)[self.dist.part(n)], data.pad)

    def pair_view(self, batch: Batch) -> torch.Tensor:
        """A second image for each of the batch's, for the generator's pair terms: another crop-and-flip view of it
        (--pairs views) or of one of its nearest neighbours of the same class (--pairs neighbours), and with
        --pair-colour a colour change."""
        x = batch.x
        if self.run.neighbours is not None:
            n = len(x) * self.dist.world
            pick = torch.randint(0, self.run.neighbours.shape[1], (n,), generator=self.rng)[self.dist.part(n)]
            x = self.run.train_images[self.run.neighbours[batch.idx, pick.to(batch.idx.device)]]
        x = self.view(x)
        if self.colour:
            x = colour_jitter(x, len(x) * self.dist.world, self.rng, self.dist.part(len(x) * self.dist.world))
        return x


@dataclass
class Epoch:
    """What one epoch's steps share: the networks, the objective, the batches and the meta rows."""

    run: Run
    nets: Nets
    objective: Objective
    batches: Batches
    reduce: Reduce | None       # gradient averaging over processes (None: one process)
    meta_rows: torch.Tensor     # a permutation of the held-out meta rows (empty: reuse training batches)

    def meta_batch(self, i: int) -> Batch | None:
        """The held-out batch of step i (cycling through the permutation), or None to reuse the training batch."""
        if not len(self.meta_rows):
            return None
        B = self.run.cfg.batch_size
        return self.batches(self.meta_rows[(i * B + torch.arange(B)) % len(self.meta_rows)])

    def pair(self, batch: Batch) -> torch.Tensor | None:
        """The generator's labels of the batch's second images, for the objective's pair terms."""
        return self.nets.generator(self.batches.pair_view(batch), batch.y) if self.objective.needs_pair else None

    def is_meta_step(self, i: int) -> bool:
        return i % self.run.cfg.meta_every == 0


Step = Callable[[Epoch, int, torch.Tensor], dict[str, Any]]


def fixed_step(ep: Epoch, i: int, rows: torch.Tensor) -> dict[str, Any]:
    """Single-task, or fixed targets (random, human, k-means, frozen soft labels)."""
    b = ep.batches(rows)
    return _trained(ep, b.x, b.y, b.target)


def generated_step(ep: Epoch, i: int, rows: torch.Tensor) -> dict[str, Any]:
    """theta1 only, on the generator's current labels (alternate's training pass, and between meta steps)."""
    b = ep.batches(rows)
    with torch.no_grad():
        target = ep.nets.generator(b.x, b.y)
    return {**_trained(ep, b.x, b.y, target), "batch": b}


def maxl_step(ep: Epoch, i: int, rows: torch.Tensor) -> dict[str, Any]:
    """Algorithm 1 on a batch: a training step, then a meta step on it (or on a held-out batch)."""
    if not ep.is_meta_step(i):
        return generated_step(ep, i, rows)
    b = ep.batches(rows)
    meta = ep.meta_batch(i)
    res = maxl_iteration(ep.nets, b.x, b.y, ep.objective, meta and meta[:2], ep.pair(meta or b), ep.reduce)
    return {**res, "x": b.x, "y": b.y}


def fused_step(ep: Epoch, i: int, rows: torch.Tensor) -> dict[str, Any]:
    """The meta step first; its look-ahead is the training step."""
    if not ep.is_meta_step(i):
        return generated_step(ep, i, rows)
    b = ep.batches(rows)
    return {**fused_iteration(ep.nets, b.x, b.y, ep.objective, ep.pair(b), ep.reduce), "x": b.x, "y": b.y}


def implicit_step_(ep: Epoch, i: int, rows: torch.Tensor) -> dict[str, Any]:
    """theta1 trains on the generator's labels; every --meta-every steps theta2 takes an implicit hypergradient
    step at the trained theta1, its signal the primary loss on a held-out batch (or this one)."""
    res = generated_step(ep, i, rows)
    if ep.is_meta_step(i):
        b = res["batch"]
        labels, pair = ep.nets.generator(b.x, b.y), ep.pair(b)
        loss = implicit_step(ep.nets, b.x, b.y, labels, ep.objective, (ep.meta_batch(i) or b)[:2], pair, ep.reduce)
        res.update(meta_before=loss, meta_after=loss)  # no look-ahead: both are the meta batch's loss at theta1
    return res


def _trained(ep: Epoch, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> dict[str, Any]:
    loss_pri, loss_aux, ok = train_step(ep.nets.model, ep.nets.opt, x, y, target, ep.objective, ep.reduce)
    return {"loss_pri": loss_pri, "loss_aux": loss_aux, "correct": ok, "target": target, "x": x, "y": y}


def pick_step(cfg: TrainConfig, targets: TargetSource) -> Step:
    """The one step function of a run's regime, chosen before the loop."""
    if targets.kind != "maxl":
        return fixed_step
    if cfg.schedule == "alternate":  # meta steps come in their own pass (meta_pass)
        return generated_step
    if cfg.hypergradient == "implicit":
        return implicit_step_
    return fused_step if cfg.fused_lookahead else maxl_step


def meta_pass(ep: Epoch, rng: torch.Generator, tally: Tally) -> None:
    """The authors' code (--schedule alternate): a reshuffled full pass of meta steps from the trained theta1."""
    run, B = ep.run, ep.run.cfg.batch_size
    rows = run.meta_idx if len(run.meta_idx) else run.train_idx
    rows = rows[torch.randperm(len(rows), generator=rng)]
    for i in range(len(rows) // B):
        b = ep.batches(rows[i * B:(i + 1) * B])
        with ep.run.precision.context():
            losses = meta_step(ep.nets, b.x, b.y, ep.nets.generator(b.x, b.y), ep.objective, ep.pair(b), ep.reduce)
        if losses is not None:
            tally.add_meta(*losses)


class Tally:
    """An epoch's running sums, kept on the device (no host sync per step)."""

    def __init__(self, run: Run) -> None:
        dev = run.device
        self.sums = {k: torch.zeros((), device=dev) for k in ("pri", "aux", "before", "after")}
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.stats = LabelStats(run.hier.psi, dev)
        self.meta_steps, self.recent = 0, []

    def add(self, res: dict[str, Any]) -> None:
        """A training step's results (with its meta step's, when it had one)."""
        self.sums["pri"] += res["loss_pri"]
        self.sums["aux"] += res["loss_aux"]
        self.correct += res["correct"]
        loss = res["loss_pri"] + res["loss_aux"]
        if "meta_after" in res:
            self._meta(res["meta_before"], res["meta_after"])
            loss = loss + res["meta_after"]
        self.recent.append(loss)  # one entry a step: _check_finite names the step from its position
        if res["target"] is not None:
            self.stats.add(res["target"], res["y"])

    def add_meta(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """A meta step of its own pass (--schedule alternate)."""
        self._meta(before, after)
        self.recent.append(after)

    def _meta(self, before: torch.Tensor, after: torch.Tensor) -> None:
        self.sums["before"] += before
        self.sums["after"] += after
        self.meta_steps += 1


def _start_epoch(run: Run, epoch: int, rngs: dict[str, torch.Generator]) -> tuple[Epoch, dict[str, float]]:
    cfg = run.cfg
    # the inner step alpha of the look-ahead is the multi-task network's learning rate of the
    # epoch, so it follows the same schedule; the generator's learning rate does too
    lrs = {"lr": lr_at(cfg.lr, epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs),
           "gen_lr": lr_at(cfg.gen_lr, epoch, cfg.epochs, cfg.lr_schedule, cfg.warmup_epochs)}
    _set_lr(run.optimizer, lrs["lr"])
    _set_lr(run.gen_optimizer, lrs["gen_lr"])
    if run.neighbours is not None and cfg.neighbour_match == "features":
        run.neighbours = feature_neighbours(run)
    run.model.train()
    if run.generator is not None:
        run.generator.train()
    dist = distributed.current()
    meta_rows = run.meta_idx[torch.randperm(len(run.meta_idx), generator=rngs["data"])] if len(run.meta_idx) \
        else run.meta_idx
    nets = Nets(run.model, run.generator, run.optimizer, run.gen_optimizer)
    return Epoch(run, nets, objective_for(cfg, lrs["lr"], run.generator), Batches(run, rngs["aug"]),
                 dist.average_ if dist.enabled else None, meta_rows), lrs


@torch.no_grad()
def feature_neighbours(run: Run, batch: int = 500) -> torch.Tensor:
    """--neighbour-match features: same-class nearest rows by the cosine of the multi-task network's backbone
    features (eval mode, no augmentation), centred over the run's rows so that shared activation is not
    similarity; a pure function of the weights, so a resumed epoch mines the same neighbours."""
    rows = torch.cat([run.train_idx, run.meta_idx]).to(run.device)
    was = run.model.training
    run.model.eval()
    feats = torch.cat([run.model.backbone(run.model.normalize(run.train_images[rows[i:i + batch]])).float()
                       for i in range(0, len(rows), batch)])
    run.model.train(was)
    feats = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
    return nearest_of_class(feats, run.train_labels, rows, run.cfg.neighbours)


def _train_epoch(run: Run, epoch: int, step: int, rngs: dict[str, torch.Generator],
                 progress: TrainProgress, out: Path | None) -> tuple[dict[str, Any], int]:
    cfg, B = run.cfg, run.cfg.batch_size
    order = run.train_idx[torch.randperm(len(run.train_idx), generator=rngs["data"])]
    ep, lrs = _start_epoch(run, epoch, rngs)
    step_fn, tally, cosines = pick_step(cfg, run.targets), Tally(run), []
    n_steps = len(order) // B  # drop the last partial batch: batch norm wants full batches
    t0 = time.perf_counter()
    progress.start_epoch(epoch, n_steps)
    for i in range(n_steps):
        with run.precision.context():
            res = step_fn(ep, i, order[i * B:(i + 1) * B])
            if cfg.cosine_every and res["target"] is not None and step % cfg.cosine_every == 0:
                # measured right after the step, on the same batch and targets
                cosines.append(grad_cosine(run.model, res["x"], res["y"], res["target"], cfg.gamma,
                                           run.model.backbone))
        step += 1
        tally.add(res)
        if (i + 1) % SYNC_EVERY == 0 or i + 1 == n_steps:
            _check_finite(tally.recent, i + 1 - len(tally.recent), epoch, n_steps, out)
            tally.recent = []
            progress.update(i + 1, {"loss": float(tally.sums["pri"]) / (i + 1),
                                    "acc": int(tally.correct) / ((i + 1) * len(res["y"]))})
    if cfg.schedule == "alternate" and run.targets.kind == "maxl":
        meta_pass(ep, rngs["data"], tally)
        _check_finite(tally.recent, 0, epoch, n_steps, out)
    return _epoch_metrics(run, epoch, n_steps, tally, lrs, cosines, time.perf_counter() - t0), step


def _epoch_metrics(run: Run, epoch: int, n_steps: int, tally: Tally, lrs: dict[str, float],
                   cosines: list[float], seconds: float) -> dict[str, Any]:
    dist = distributed.current()
    if dist.enabled:  # rank 0 logs global numbers; BN statistics agree before evaluation and checkpoints
        distributed.reduce_epoch(dist, tally.sums, tally.correct, tally.stats, run.model, run.generator)
    n, s = max(n_steps, 1), tally.sums
    m: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "lr": lrs["lr"],
                         "train_loss_pri": float(s["pri"]) / n, "train_loss_aux": float(s["aux"]) / n,
                         "train_acc": int(tally.correct) / (n * run.cfg.batch_size)}
    if run.targets.kind == "maxl":
        k = tally.meta_steps  # none when the objective has no meta-signal (--meta-weight 0)
        m.update(gen_lr=lrs["gen_lr"], meta_loss_before=float(s["before"]) / k if k else None,
                 meta_loss_after=float(s["after"]) / k if k else None)
    if run.targets.kind != "none":
        m.update(tally.stats.summary())
    if cosines:
        m["grad_cosine"] = sum(cosines) / len(cosines)
    m["time_s"] = seconds
    return m


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
