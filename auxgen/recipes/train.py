"""`auxgen train`: MAXL co-training (or a baseline) into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from auxgen import distributed
from auxgen.api import check_out_outside_data, train_run, training_dir
from auxgen.config import load_config_file, resolve_config
from auxgen.errors import AuxgenError
from auxgen.recipes.options import RUN_PANEL, with_config_options
from auxgen.rundir import RunDir


@with_config_options  # a flag for every TrainConfig field, passed in `options`
def train_command(
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to create (config, metrics, checkpoints).",
                             rich_help_panel=RUN_PANEL),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this directory.",
                                rich_help_panel=RUN_PANEL),
    force: bool = typer.Option(False, "--force", help="Replace an earlier auxgen run in --out.", metavar="",
                               rich_help_panel=RUN_PANEL),
    config: Path = typer.Option(None, "--config", "-c", help="JSON or TOML file of options; flags override it.",
                                rich_help_panel=RUN_PANEL),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no summary.", metavar="",
                               rich_help_panel=RUN_PANEL),
    **options: Any,
) -> None:
    """Train MAXL (or a baseline) and write a run directory: config.json, metrics.jsonl, checkpoints/.

    Each option shows its first sentence; `python -m auxgen.recipes.options` prints them in full.
    """
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
        check_out_outside_data(out_dir, cfg)
    # nothing left to train: say so, not just the summary (a larger --epochs has more to train)
    finished = resume is not None and RunDir(resume).finished and cfg.epochs <= _saved_epochs(resume)
    summary = train_run(cfg, out_dir, resume=resume is not None, force=force, show=not quiet)
    is_main = distributed.current().is_main
    if finished and is_main:
        RunDir(resume).note_finished()
    if not quiet and is_main:
        _print_summary(summary)


def after_interrupt() -> str:
    """What an interrupted `auxgen train` left: finished epochs, or (none finished) nothing to continue from."""
    run = training_dir()
    if run is not None and RunDir(run).last.is_file():
        return f"finished epochs are saved (continue with auxgen train --resume {run})"
    if run is not None and RunDir(run).config.is_file():
        return (f"no epoch had finished, so nothing was saved; start again with auxgen train --resume {run} "
                f"(from epoch 1)")
    return ("no epoch had finished, so nothing was saved; run the command again (a run folder that has its "
            "config.json also starts over with auxgen train --resume RUN)")


def _saved_epochs(run: Path) -> int:
    """The epochs the run's config.json was trained for."""
    epochs = load_config_file(RunDir(run).config).get("epochs")
    return epochs if isinstance(epochs, int) else 0


def _print_summary(s: dict) -> None:
    table = Table(title="auxgen train", show_header=False)
    table.add_row("method", s["method"])
    table.add_row("epochs", str(s["epochs"]))
    table.add_row("test primary accuracy (last)", f"{100 * s['final_test_acc']:.2f}%")
    on = ", chosen on validation" if s.get("best_on") == "val_acc" else ""
    table.add_row("test primary accuracy (best)", f"{100 * s['best_test_acc']:.2f}% (epoch {s['best_epoch']}{on})")
    if s.get("best_val_acc") is not None:
        table.add_row("validation accuracy (best)", f"{100 * s['best_val_acc']:.2f}%")
    if s.get("aux_usage_entropy") is not None:
        table.add_row("auxiliary usage entropy",
                      f"{s['aux_usage_entropy']:.3f} of max {s['aux_usage_entropy_max']:.3f} nats")
        table.add_row("per-sample entropy in block", f"{100 * s['aux_sample_entropy_frac']:.1f}% of max")
        if s.get("aux_block_usage_frac") is not None:
            table.add_row("usage inside each block", f"{100 * s['aux_block_usage_frac']:.1f}% of max")
    if s.get("neighbour_purity") is not None:
        table.add_row("neighbour purity (fine class)", f"{100 * s['neighbour_purity']:.1f}% of pair neighbours")
    if s.get("in_block_nmi") is not None:
        table.add_row("in-block NMI with fine labels", f"{s['in_block_nmi']:.3f} (0: none of their structure)")
    table.add_row("run directory", s["run_dir"])
    Console().print(table)
