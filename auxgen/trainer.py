"""The training loop around Algorithm 1: data, schedule, metrics, checkpoints and resume.

One loop serves every method (maxl, single, random, human), so comparisons are fair: the
methods differ only in where the auxiliary targets of the training step come from.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import auxgen
from auxgen.checkpoint import load_checkpoint, save_checkpoint, write_json_atomic, write_text_atomic
from auxgen.config import TrainConfig
from auxgen.data import Data, Split, apply_views, draw_views, load_data
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy, cifar100_human, parse_psi
from auxgen.losses import block_entropy, focal_loss
from auxgen.maxl import grad_cosine, maxl_iteration, train_step
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.progress import TrainProgress

CHECKPOINT_FORMAT = 1
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "summary.json")
SYNC_EVERY = 10  # steps between host syncs (NaN check, progress); exact step still reported


class Diverged(AuxgenError):
    """The loss became NaN or infinite."""

    exit_code = 1


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise AuxgenError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def hierarchy_for(cfg: TrainConfig, num_primary: int) -> tuple[Hierarchy, torch.Tensor | None]:
    """psi of a run, and for --method human the fine-label -> auxiliary-label map."""
    if cfg.method == "human":
        if cfg.psi or cfg.psi_file:
            raise AuxgenError("--method human takes psi from the CIFAR-100 hierarchy; drop --psi/--psi-file")
        return cifar100_human(cfg.primary_level, cfg.aux_level)
    return parse_psi(cfg.psi, cfg.psi_file, num_primary), None


def build_models(cfg: TrainConfig, channels: int, hier: Hierarchy) -> tuple[MultiTaskNet, LabelGenerator | None]:
    """The multi-task network, and the label generator for --method maxl (else None), for `channels`-channel images."""
    model = MultiTaskNet(cfg.backbone, channels, hier.num_primary, hier.num_aux, cfg.width)
    gen = (LabelGenerator(cfg.backbone, channels, hier, cfg.gen_width or cfg.width)
           if cfg.method == "maxl" else None)
    return model, gen


def lr_at(base: float, epoch: int, epochs: int) -> float:
    """The paper halves every 50 of 200 epochs; for other lengths, halve at 25%, 50%, 75%."""
    milestones = [math.ceil(epochs * q / 4) for q in (1, 2, 3)]
    return base * 0.5 ** sum(epoch > m for m in milestones if m > 0)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: MultiTaskNet, split: Split, device: torch.device, batch_size: int,
             gamma: float = 2.0) -> dict[str, float]:
    """Primary-task loss and accuracy on a split, in eval mode, in a fixed order."""
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
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
    fixed_aux: torch.Tensor | None  # auxiliary class per training row (random / human), on the device
    train_images: torch.Tensor      # data.train on the device
    train_labels: torch.Tensor


def setup(cfg: TrainConfig, data: Data | None = None) -> Run:
    """Load data, build models and optimisers from a seed."""
    device = pick_device(cfg.device)
    data = data or load_data(cfg)
    hier, human_map = hierarchy_for(cfg, data.num_classes)
    torch.manual_seed(cfg.seed)
    model, gen = build_models(cfg, data.image_shape[0], hier)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    gen_optimizer = None
    if gen is not None:
        gen.to(device)
        l2 = cfg.gen_weight_decay if cfg.gen_decay == "l2" else 0.0
        gen_optimizer = torch.optim.SGD(gen.parameters(), lr=cfg.gen_lr, weight_decay=l2)

    n = len(data.train)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.method == "maxl" and cfg.meta_split > 0:
        perm = torch.randperm(n, generator=g)
        n_meta = int(round(n * cfg.meta_split))
        if n_meta < 2 or n - n_meta < cfg.batch_size:
            raise AuxgenError(f"--meta-split {cfg.meta_split} leaves {n_meta} meta and {n - n_meta} "
                              f"training samples; need at least 2 and one batch ({cfg.batch_size})")
        meta_idx, train_idx = perm[:n_meta].sort().values, perm[n_meta:].sort().values
    else:
        train_idx, meta_idx = torch.arange(n), torch.arange(0)
    if len(train_idx) < cfg.batch_size:
        raise AuxgenError(f"{len(train_idx)} training samples is fewer than one batch; lower --batch-size")

    fixed_aux = None
    labels = data.train.labels
    if cfg.method == "random":
        # drawn once from the seed: a fixed random class inside each sample's true block
        draw = torch.rand(n, generator=g)
        psi = torch.tensor(hier.psi)
        fixed_aux = torch.tensor(hier.offsets)[labels] + (draw * psi[labels]).long()
    elif cfg.method == "human":
        fixed_aux = human_map[data.train.fine]
    if fixed_aux is not None:
        fixed_aux = fixed_aux.to(device)
    return Run(cfg, data, hier, device, model, gen, optimizer, gen_optimizer, train_idx, meta_idx,
               fixed_aux, data.train.images.to(device), data.train.labels.to(device))


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
            "augment": d.augment, "pad": d.pad,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder unless --force names an earlier auxgen run to replace."""
    if out.exists() and not out.is_dir():
        raise AuxgenError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise AuxgenError(f"--out {out} is not empty; pass --resume to continue that run or "
                              f"--force to replace it")
        if not (out / "config.json").is_file():
            raise AuxgenError(f"--out {out} is not empty and holds no auxgen run; refusing to delete "
                              f"its files even with --force")
        for name in RUN_FILES:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


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


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, show: bool = True,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None, data: Data | None = None
          ) -> dict[str, Any]:
    """Train a run into `out` (config.json, metrics.jsonl, checkpoints/); returns the summary.

    With resume=True the run continues from checkpoints/last.pt with every optimiser, schedule
    and RNG state restored, so it ends exactly as an uninterrupted run would (on CPU).
    """
    out = Path(out)
    run = setup(cfg, data)
    meta = run_metadata(run)
    gens = {"data": torch.Generator().manual_seed(cfg.seed + 2),
            "aug": torch.Generator().manual_seed(cfg.seed + 3)}
    history: list[dict[str, Any]] = []
    best, start_epoch, step = (-1.0, 0), 1, 0
    if resume:
        saved = json.loads((out / "config.json").read_text())
        if saved["data"]["fingerprint"] != meta["data"]["fingerprint"]:
            raise AuxgenError(f"the dataset differs from the one {out} was trained on "
                              f"(fingerprint mismatch); resume needs the same data")
        meta = saved
        last = out / "checkpoints" / "last.pt"
        if last.is_file():
            state = load_checkpoint(last)
            run.model.load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])
            if run.generator is not None:
                run.generator.load_state_dict(state["generator"])
                run.gen_optimizer.load_state_dict(state["gen_optimizer"])
            for k, g in gens.items():
                g.set_state(state["rng"][k])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            history, best = state["history"], (state["best_acc"], state["best_epoch"])
            start_epoch, step = state["epoch"] + 1, state["global_step"]
    write_json_atomic(out / "config.json", meta)

    progress = TrainProgress(cfg.epochs, enabled=show)
    warned: set[str] = set()
    with progress:
        for epoch in range(start_epoch, cfg.epochs + 1):
            metrics, step = _train_epoch(run, epoch, step, gens, progress)
            ev = evaluate(run.model, run.data.test, run.device, cfg.eval_batch_size, cfg.gamma)
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
            state = _state(run, epoch, step, gens, history, best)
            save_checkpoint(state, out / "checkpoints" / "last.pt")
            if improved:
                save_checkpoint(state, out / "checkpoints" / "best.pt")
            write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
            progress.end_epoch(metrics)
            if on_epoch_end is not None:
                on_epoch_end(metrics)
    summary = {"run_dir": str(out), "method": cfg.method, "epochs": len(history),
               "final_test_acc": history[-1]["test_acc"] if history else None,
               "best_test_acc": best[0], "best_epoch": best[1],
               "aux_usage_entropy": history[-1].get("aux_usage_entropy") if history else None,
               "aux_usage_entropy_max": history[-1].get("aux_usage_entropy_max") if history else None,
               "aux_sample_entropy_frac": history[-1].get("aux_sample_entropy_frac") if history else None}
    write_json_atomic(out / "summary.json", summary)
    return summary


def _train_epoch(run: Run, epoch: int, step: int, gens: dict[str, torch.Generator],
                 progress: TrainProgress) -> tuple[dict[str, Any], int]:
    cfg, data, dev, hier = run.cfg, run.data, run.device, run.hier
    lr, gen_lr = lr_at(cfg.lr, epoch, cfg.epochs), lr_at(cfg.gen_lr, epoch, cfg.epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if run.gen_optimizer is not None:
        for group in run.gen_optimizer.param_groups:
            group["lr"] = gen_lr
    l1 = cfg.gen_weight_decay if cfg.gen_decay == "l1" else 0.0  # l2 is in the optimiser
    run.model.train()
    if run.generator is not None:
        run.generator.train()

    # the training set lives on the device (put there once per run): batches and augmentation
    # never cross the host-device boundary
    B, images, labels = cfg.batch_size, run.train_images, run.train_labels
    order = run.train_idx[torch.randperm(len(run.train_idx), generator=gens["data"])]
    n_steps = len(order) // B  # drop the last partial batch: batch norm wants full batches
    meta_order = (run.meta_idx[torch.randperm(len(run.meta_idx), generator=gens["data"])]
                  if len(run.meta_idx) else None)

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(dev)
        x = images[idx]
        if data.augment:  # views are drawn on the CPU generator, so runs replay on any device
            x = apply_views(x, draw_views(len(idx), data.pad, gens["aug"]), data.pad)
        return x, labels[idx]

    zero = torch.zeros((), device=dev)
    sums = {k: zero.clone() for k in ("pri", "aux", "before", "after", "sample_h", "sample_frac")}
    correct, n_frac = torch.zeros((), dtype=torch.long, device=dev), torch.zeros((), dtype=torch.long, device=dev)
    usage = torch.zeros(hier.num_aux, device=dev)
    log_psi = torch.tensor(hier.psi, dtype=torch.float32, device=dev).log()
    cosines: list[float] = []
    recent: list[torch.Tensor] = []
    t0 = time.perf_counter()
    progress.start_epoch(epoch, n_steps)
    amp = autocast(cfg, dev)
    for i in range(n_steps):
        idx = order[i * B:(i + 1) * B]
        x, y = batch(idx)
        with amp:
            if cfg.method == "maxl":
                meta_batch = None
                if meta_order is not None:
                    meta_batch = batch(meta_order[(i * B + torch.arange(B)) % len(meta_order)])
                out = maxl_iteration(run.model, run.generator, run.optimizer, run.gen_optimizer, x, y, alpha=lr,
                                     gamma=cfg.gamma, entropy_weight=cfg.entropy_weight, order=cfg.meta_order,
                                     l1_decay=l1, meta_batch=meta_batch, fused=cfg.fused_lookahead)
                loss_pri, loss_aux, ok, target = out["loss_pri"], out["loss_aux"], out["correct"], out["target"]
                after = out["meta_after"]
                sums["before"] += out["meta_before"]
                sums["after"] += after
            else:
                target = (F.one_hot(run.fixed_aux[idx.to(dev)], hier.num_aux).float()
                          if cfg.method in ("random", "human") else None)
                loss_pri, loss_aux, ok = train_step(run.model, run.optimizer, x, y, target, cfg.gamma)
            if cfg.cosine_every and target is not None and step % cfg.cosine_every == 0:
                # measured right after the step, on the same batch and targets
                cosines.append(grad_cosine(run.model, x, y, target, cfg.gamma, run.model.backbone))
        step += 1
        sums["pri"] += loss_pri
        sums["aux"] += loss_aux
        correct += ok
        recent.append(loss_pri + loss_aux + (after if cfg.method == "maxl" else 0.0))
        if target is not None:
            usage += target.float().sum(0)
            h = block_entropy(target.float())
            sums["sample_h"] += h.sum()
            multi = log_psi[y] > 0
            sums["sample_frac"] += (h[multi] / log_psi[y][multi]).sum()
            n_frac += multi.sum()
        if (i + 1) % SYNC_EVERY == 0 or i + 1 == n_steps:
            bad = (~torch.isfinite(torch.stack(recent))).nonzero()
            if len(bad):
                at = i + 1 - len(recent) + int(bad[0])
                raise Diverged(f"loss became NaN/Inf at epoch {epoch}, step {at + 1}/{n_steps}; stopped. "
                               f"The last good checkpoint is checkpoints/last.pt (epoch {epoch - 1}); "
                               f"try a lower --lr or --gen-lr")
            recent = []
            progress.update(i + 1, {"loss": float(sums["pri"]) / (i + 1), "acc": int(correct) / ((i + 1) * B)})

    n = max(n_steps, 1)
    m: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "lr": lr,
                         "train_loss_pri": float(sums["pri"]) / n, "train_loss_aux": float(sums["aux"]) / n,
                         "train_acc": int(correct) / (n * B)}
    if cfg.method == "maxl":
        m.update(gen_lr=gen_lr, meta_loss_before=float(sums["before"]) / n, meta_loss_after=float(sums["after"]) / n)
    if cfg.method != "single":
        p = usage / usage.sum().clamp_min(1e-12)
        m.update(aux_usage_entropy=float(-torch.special.xlogy(p, p).sum()),
                 aux_usage_entropy_max=math.log(hier.num_aux),
                 aux_sample_entropy=float(sums["sample_h"]) / (n * B),
                 aux_sample_entropy_frac=float(sums["sample_frac"]) / max(int(n_frac), 1))
    if cosines:
        m["grad_cosine"] = sum(cosines) / len(cosines)
    m["time_s"] = time.perf_counter() - t0
    return m, step


def _collapse_warnings(run: Run, m: dict[str, Any], epoch: int) -> dict[str, str]:
    """The generator's two failure modes (kind -> message), once training is a quarter through (or at the end)."""
    if run.cfg.method != "maxl" or (epoch <= run.cfg.epochs / 4 and epoch < run.cfg.epochs):
        return {}
    out = {}
    if run.hier.num_aux > 1 and m["aux_usage_entropy"] < 0.5 * m["aux_usage_entropy_max"]:
        out["collapse"] = (f"auxiliary classes collapsing: usage entropy {m['aux_usage_entropy']:.3f} is under half "
                   f"its maximum {m['aux_usage_entropy_max']:.3f}; consider a larger --entropy-weight")
    if m["aux_sample_entropy_frac"] > 0.95 and max(run.hier.psi) > 1:
        out["uniform"] = (f"soft labels nearly uniform inside their blocks (per-sample entropy "
                   f"{100 * m['aux_sample_entropy_frac']:.1f}% of its maximum): the auxiliary task adds little "
                   f"beyond the primary labels; measure its value with `auxgen verify --retrain`")
    return out
