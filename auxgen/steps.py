"""One training step of each regime, and the batches it steps on: the algorithm's side of the loop.

auxgen/maxl.py is Algorithm 1 as plain functions over modules and tensors; this module feeds it. A step
regime maps (the epoch, step i, rows of the training split) to that step's results:

    fixed_step        single-task, or fixed targets (random, human, k-means, frozen soft labels)
    generated_step    theta1 alone on the generator's current labels (between meta steps; alternate)
    maxl_step         Algorithm 1: a training step, then a meta step (maxl.maxl_iteration)
    fused_step        the meta step first, its look-ahead the training step (maxl.fused_iteration)
    hypergradient_step  theta1 on the labels, then an implicit hypergradient step (maxl.implicit_step)

`pick_step` chooses one per run before the loop; `meta_pass` is the authors' separate pass of meta
steps (--schedule alternate). `BatchSource` turns rows into this process's share of a batch on the
device, and draws the second image of each pair for the objective's pair terms. The decisions maxl.py
leaves out (device, process share, random draws) are made here, by CPU generators over the global
batch, so every process stays in step and a run replays on any device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from auxgen import distributed
from auxgen.compose import pair_colour_on
from auxgen.config import PRESETS, TrainConfig
from auxgen.data import Data, apply_views, colour_jitter, draw_views, nearest_of_class
from auxgen.hierarchy import Hierarchy
from auxgen.label_stats import LabelStats
from auxgen.maxl import Nets, Objective, Reduce, fused_iteration, implicit_step, maxl_iteration, meta_step, train_step
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.runtime import Precision


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


@dataclass
class Training:
    """The in-memory state of one training: what the steps step on and the loop evaluates and saves."""

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
    val_idx: torch.Tensor = dataclasses.field(default_factory=lambda: torch.arange(0))  # --val-split rows


# ------------------------------------------------------------------------------ the objective
def objective_for(cfg: TrainConfig, alpha: float, generator: torch.nn.Module | None = None) -> Objective:
    """The epoch's Objective, every field given from the config (Objective has no defaults of its own, so a
    renamed option fails here instead of falling back to another value); alpha is the epoch's learning rate,
    the weighting the generator's learned loss weighting (--aux-weighting learned) if it has one."""
    return Objective(
        alpha=alpha, gamma=cfg.gamma, aux_weight=cfg.aux_weight, meta_order=cfg.meta_order,
        neumann_steps=cfg.neumann_steps, meta_weight=cfg.meta_weight, meta_norm=cfg.meta_norm,
        entropy_weight=cfg.entropy_weight, usage_entropy=cfg.usage_entropy, sharpness_weight=cfg.sharpness_weight,
        consistency_weight=cfg.consistency_weight, invariance_weight=cfg.invariance_weight,
        gen_l1=cfg.gen_weight_decay if cfg.gen_decay == "l1" else 0.0,  # l2 is in the generator's optimiser
        weighting=getattr(generator, "loss_weighting", None))


def paper_objective(alpha: float, gamma: float | None = None, **fields: Any) -> Objective:
    """The objective of --preset paper with `fields` changed: for tests and benchmarks of maxl.py alone."""
    obj = objective_for(TrainConfig(**PRESETS["paper"]), alpha)
    return dataclasses.replace(obj, **fields, **({} if gamma is None else {"gamma": gamma}))


# ------------------------------------------------------------------------------ batches
class Batch(NamedTuple):
    """This process's share of a batch: images, primary labels, fixed targets (or None) and their rows."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    idx: torch.Tensor


class BatchSource:
    """Rows of data.train -> this process's share of (images, primary labels, fixed targets) on the device.

    The training set lives on the device (put there once per run): batches and augmentation
    never cross the host-device boundary. Random draws are made for the whole global batch on
    CPU generators, so every process stays in step and runs replay on any device.
    """

    def __init__(self, tr: Training, rng: torch.Generator) -> None:
        self.tr, self.rng, self.dist = tr, rng, distributed.current()
        self.colour = pair_colour_on(tr.cfg, tr.train_images.shape[1])

    def __call__(self, rows: torch.Tensor) -> Batch:
        tr, src, data = self.tr, self.tr.targets, self.tr.data
        part = self.dist.part(len(rows))
        n, idx = len(rows), rows[part].to(tr.device)
        x, target = tr.train_images[idx], None
        if src.views is not None:  # a random stored view per row, with that view's label
            v = torch.randint(0, src.views.shape[1], (n,), generator=self.rng)[part].to(tr.device)
            return Batch(apply_views(x, src.views[idx, v], data.pad), tr.train_labels[idx], src.labels[idx, v], idx)
        if data.augment:
            x = self.view(x, n)
        if src.kind == "hard":
            target = F.one_hot(src.labels[idx], tr.hier.num_aux).float()
        elif src.kind == "soft":
            target = src.labels[idx].float()
        return Batch(x, tr.train_labels[idx], target, idx)

    def view(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """A random crop-and-flip view of this process's images x (n: the global batch size)."""
        n = n or len(x) * self.dist.world
        data = self.tr.data
        return apply_views(x, draw_views(n, data.pad, self.rng, data.flip)[self.dist.part(n)], data.pad)

    def pair_view(self, batch: Batch) -> torch.Tensor:
        """A second image for each of the batch's, for the generator's pair terms: another crop-and-flip view of it
        (--pairs views) or of one of its nearest neighbours of the same class (--pairs neighbours), and with
        --pair-colour a colour change."""
        x = batch.x
        if self.tr.neighbours is not None:
            n = len(x) * self.dist.world
            pick = torch.randint(0, self.tr.neighbours.shape[1], (n,), generator=self.rng)[self.dist.part(n)]
            x = self.tr.train_images[self.tr.neighbours[batch.idx, pick.to(batch.idx.device)]]
        x = self.view(x)
        if self.colour:
            x = colour_jitter(x, len(x) * self.dist.world, self.rng, self.dist.part(len(x) * self.dist.world))
        return x


@torch.no_grad()
def feature_neighbours(tr: Training, batch: int = 500) -> torch.Tensor:
    """--neighbour-match features: same-class nearest rows by the cosine of the multi-task network's backbone
    features (eval mode, no augmentation), centred over the run's rows so that shared activation is not
    similarity; a pure function of the weights, so a resumed epoch mines the same neighbours."""
    rows = torch.cat([tr.train_idx, tr.meta_idx]).to(tr.device)
    was = tr.model.training
    tr.model.eval()
    feats = torch.cat([tr.model.backbone(tr.model.normalize(tr.train_images[rows[i:i + batch]])).float()
                       for i in range(0, len(rows), batch)])
    tr.model.train(was)
    feats = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
    return nearest_of_class(feats, tr.train_labels, rows, tr.cfg.neighbours)


# ------------------------------------------------------------------------------ the step regimes
@dataclass
class Epoch:
    """What one epoch's steps share: the networks, the objective, the batches and the meta rows."""

    tr: Training
    nets: Nets
    objective: Objective
    batches: BatchSource
    reduce: Reduce | None       # gradient averaging over processes (None: one process)
    meta_rows: torch.Tensor     # a permutation of the held-out meta rows (empty: reuse training batches)

    def meta_batch(self, i: int) -> Batch | None:
        """The held-out batch of step i (cycling through the permutation), or None to reuse the training batch."""
        if not len(self.meta_rows):
            return None
        B = self.tr.cfg.batch_size
        return self.batches(self.meta_rows[(i * B + torch.arange(B)) % len(self.meta_rows)])

    def pair(self, batch: Batch) -> torch.Tensor | None:
        """The generator's labels of the batch's second images, for the objective's pair terms."""
        return self.nets.generator(self.batches.pair_view(batch), batch.y) if self.objective.needs_pair else None

    def is_meta_step(self, i: int) -> bool:
        return i % self.tr.cfg.meta_every == 0


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


def hypergradient_step(ep: Epoch, i: int, rows: torch.Tensor) -> dict[str, Any]:
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
        return hypergradient_step
    return fused_step if cfg.fused_lookahead else maxl_step


def meta_pass(ep: Epoch, rng: torch.Generator, tally: Tally) -> None:
    """The authors' code (--schedule alternate): a reshuffled full pass of meta steps from the trained theta1."""
    tr, B = ep.tr, ep.tr.cfg.batch_size
    rows = tr.meta_idx if len(tr.meta_idx) else tr.train_idx
    rows = rows[torch.randperm(len(rows), generator=rng)]
    for i in range(len(rows) // B):
        b = ep.batches(rows[i * B:(i + 1) * B])
        with tr.precision.context():
            losses = meta_step(ep.nets, b.x, b.y, ep.nets.generator(b.x, b.y), ep.objective, ep.pair(b), ep.reduce)
        if losses is not None:
            tally.add_meta(*losses)


class Tally:
    """An epoch's running sums, kept on the device (no host sync per step)."""

    def __init__(self, tr: Training) -> None:
        dev = tr.device
        self.sums = {k: torch.zeros((), device=dev) for k in ("pri", "aux", "before", "after")}
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.stats = LabelStats(tr.hier.psi, dev)
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
        self.recent.append(loss)  # one entry a step: the loop's finiteness check names the step from its position
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
