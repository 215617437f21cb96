"""`auxgen train`: MAXL co-training (or a baseline) into a run directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from auxgen import distributed
from auxgen.compose import hierarchy_for, load_data
from auxgen.config import TrainConfig, load_config_file, resolve_config
from auxgen.errors import AuxgenError
from auxgen.paths import refuse_inside
from auxgen.progress import tensorboard_writer_class
from auxgen.recipes.options import with_config_options
from auxgen.rundir import RunDir
from auxgen.runtime import pick_device
from auxgen.trainer import split_rows, train


@with_config_options  # a flag for every TrainConfig field, passed in `options`
def train_command(
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to create (config, metrics, checkpoints)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier auxgen run in --out.", metavar=""),
    config: Path = typer.Option(None, "--config", "-c", help="JSON or TOML file of options; flags override it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no summary.", metavar=""),
    **options: Any,
) -> None:
    """Train MAXL (or a baseline) and write a run directory: config.json, metrics.jsonl, checkpoints/."""
    overrides = {k: v for k, v in options.items() if v is not None}
    if resume is not None:
        if out is not None and Path(out) != resume:
            raise AuxgenError("give either --out (new run) or --resume (existing run), not both")
        run_dir = RunDir(resume)
        if not run_dir.config.is_file():
            raise AuxgenError(f"--resume {resume}: no config.json there; is it an auxgen run directory?")
        cfg_data = load_config_file(run_dir.config)
        run_dir.check_resumable()
        # what does not change the trained networks; --epochs may grow (the trainer refuses fewer than finished)
        allowed = {"device", "data_root", "test_root", "download", "eval_batch_size", "epochs", "log", "log_every"}
        changed = sorted(k for k, v in overrides.items() if k not in allowed and cfg_data.get(k) != v)
        if changed or config is not None:
            raise AuxgenError(f"--resume continues the saved configuration; drop "
                              f"{', '.join('--' + c.replace('_', '-') for c in changed) or '--config'}")
        cfg = resolve_config(run_dir.config, overrides)
        out_dir = resume
    else:
        if out is None:
            raise AuxgenError("give --out DIR for a new run (or --resume DIR to continue one)")
        cfg = resolve_config(config, overrides)
        out_dir = out
        _check_out_outside_data(out_dir, cfg)
    # what can fail on the inputs fails before --force deletes an earlier run in --out
    if cfg.log == "tensorboard":
        tensorboard_writer_class()
    device = pick_device(cfg.device)
    dist = distributed.init(device)  # torchrun: one process per GPU (or CPU share), rank 0 writes the run
    dist.check_batch(cfg.batch_size)
    distributed.check_sync_bn(cfg.sync_bn, cfg.method, cfg.meta_order, device)
    data = dist.main_first(lambda: load_data(cfg))  # rank 0 first: a --download happens once
    hierarchy_for(cfg, data)
    split_rows(cfg, len(data.train))  # the data fits the batch size
    # nothing left to train: say so, not just the summary (a larger --epochs has more to train)
    finished = resume is not None and RunDir(resume).finished and cfg.epochs <= _saved_epochs(resume)
    with contextlib.ExitStack() as stack:
        dist.on_main(lambda: _prepare(stack, out_dir, resume is not None, force))
        summary = train(cfg, out_dir, resume=resume is not None, show=not quiet, data=data)
    if finished and dist.is_main:
        RunDir(resume).note_finished()
    if not quiet and dist.is_main:
        _print_summary(summary)


def _saved_epochs(run: Path) -> int:
    """The epochs the run's config.json was trained for."""
    epochs = load_config_file(RunDir(run).config).get("epochs")
    return epochs if isinstance(epochs, int) else 0


_training: Path | None = None  # the run directory this process trains into, for after_interrupt


def after_interrupt() -> str:
    """What an interrupted `auxgen train` left: finished epochs, or (none finished) nothing to continue from."""
    if _training is not None and RunDir(_training).last.is_file():
        return f"finished epochs are saved (continue with auxgen train --resume {_training})"
    if _training is not None and RunDir(_training).config.is_file():
        return (f"no epoch had finished, so nothing was saved; start again with auxgen train --resume {_training} "
                f"(from epoch 1)")
    return ("no epoch had finished, so nothing was saved; run the command again (a run folder that has its "
            "config.json also starts over with auxgen train --resume RUN)")


def _prepare(stack: contextlib.ExitStack, out_dir: Path, resume: bool, force: bool) -> None:
    """Lock the run directory (held in `stack` while training) and make it ready to write into."""
    global _training
    run_dir = RunDir(out_dir)
    _training = out_dir
    if resume:
        stack.enter_context(run_dir.lock())
        run_dir.remove_stale_temp_files()
        run_dir.check_resumable()
    else:
        # lock before prepare when the folder exists: --force must not delete the files of a run
        # that is still training
        locked = out_dir.is_dir()
        if locked:
            stack.enter_context(run_dir.lock())
        run_dir.prepare(force)
        if not locked:
            stack.enter_context(run_dir.lock())


def _check_out_outside_data(out: Path, cfg: TrainConfig) -> None:
    """An ImageFolder's subfolders are its classes: a run directory inside the tree would become one."""
    if cfg.dataset == "imagefolder":
        refuse_inside(out, (cfg.data_root, cfg.test_root), "--out", "the ImageFolder tree",
                      "its folder would become a class of the data")


def _print_summary(s: dict) -> None:
    table = Table(title="auxgen train", show_header=False)
    table.add_row("method", s["method"])
    table.add_row("epochs", str(s["epochs"]))
    table.add_row("test primary accuracy (last)", f"{100 * s['final_test_acc']:.2f}%")
    table.add_row("test primary accuracy (best)", f"{100 * s['best_test_acc']:.2f}% (epoch {s['best_epoch']})")
    if s.get("aux_usage_entropy") is not None:
        table.add_row("auxiliary usage entropy",
                      f"{s['aux_usage_entropy']:.3f} of max {s['aux_usage_entropy_max']:.3f} nats")
        table.add_row("per-sample entropy in block", f"{100 * s['aux_sample_entropy_frac']:.1f}% of max")
        if s.get("aux_block_usage_frac") is not None:
            table.add_row("usage inside each block", f"{100 * s['aux_block_usage_frac']:.1f}% of max")
    table.add_row("run directory", s["run_dir"])
    Console().print(table)
