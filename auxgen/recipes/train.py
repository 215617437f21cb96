"""`auxgen train`: MAXL co-training (or a baseline) into a run directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from auxgen.config import TrainConfig, field_help, load_config_file, resolve_config
from auxgen.errors import AuxgenError
from auxgen.trainer import prepare_out_dir, train


def _o(name: str, *flags: str) -> typer.models.OptionInfo:
    return typer.Option(None, *flags, help=field_help(name), show_default=False)


def train_command(
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to create (config, metrics, checkpoints)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier auxgen run in --out."),
    config: Path = typer.Option(None, "--config", "-c", help="JSON or TOML file of options; flags override it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no summary."),
    dataset: str = _o("dataset"),
    data_root: str = _o("data_root"),
    test_root: str = _o("test_root"),
    download: bool = typer.Option(None, "--download/--no-download", help=field_help("download"), show_default=False),
    primary_level: int = _o("primary_level"),
    aux_level: int = _o("aux_level"),
    image_size: int = _o("image_size"),
    psi: str = _o("psi"),
    psi_file: str = _o("psi_file"),
    method: str = _o("method"),
    backbone: str = _o("backbone"),
    width: int = _o("width"),
    gen_width: int = _o("gen_width"),
    epochs: int = _o("epochs"),
    batch_size: int = _o("batch_size"),
    lr: float = _o("lr"),
    momentum: float = _o("momentum"),
    weight_decay: float = _o("weight_decay"),
    gen_lr: float = _o("gen_lr"),
    gen_weight_decay: float = _o("gen_weight_decay"),
    gen_decay: str = _o("gen_decay"),
    gamma: float = _o("gamma"),
    entropy_weight: float = _o("entropy_weight"),
    meta_order: int = _o("meta_order"),
    meta_split: float = _o("meta_split"),
    fused_lookahead: bool = typer.Option(None, "--fused-lookahead/--no-fused-lookahead",
                                         help=field_help("fused_lookahead"), show_default=False),
    augment: str = _o("augment"),
    seed: int = _o("seed"),
    device: str = _o("device"),
    bf16: bool = typer.Option(None, "--bf16/--no-bf16", help=field_help("bf16"), show_default=False),
    cosine_every: int = _o("cosine_every"),
    eval_batch_size: int = _o("eval_batch_size"),
) -> None:
    """Train MAXL (or a baseline) and write a run directory: config.json, metrics.jsonl, checkpoints/."""
    overrides = {k: v for k, v in locals().items()
                 if k in TrainConfig.__dataclass_fields__ and v is not None}
    if resume is not None:
        if out is not None and Path(out) != resume:
            raise AuxgenError("give either --out (new run) or --resume (existing run), not both")
        if not (resume / "config.json").is_file():
            raise AuxgenError(f"--resume {resume}: no config.json there; is it an auxgen run directory?")
        cfg_data = load_config_file(resume / "config.json")
        allowed = {"device", "data_root", "test_root", "download", "eval_batch_size"}
        changed = sorted(k for k, v in overrides.items() if k not in allowed and cfg_data.get(k) != v)
        if changed or config is not None:
            raise AuxgenError(f"--resume continues the saved configuration; drop "
                              f"{', '.join('--' + c.replace('_', '-') for c in changed) or '--config'}")
        cfg = resolve_config(resume / "config.json", overrides)
        out_dir = resume
    else:
        if out is None:
            raise AuxgenError("give --out DIR for a new run (or --resume DIR to continue one)")
        cfg = resolve_config(config, overrides)
        out_dir = out
        prepare_out_dir(out_dir, force)
    summary = train(cfg, out_dir, resume=resume is not None, show=not quiet)
    if not quiet:
        _print_summary(summary)


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
    table.add_row("run directory", s["run_dir"])
    Console().print(table)
