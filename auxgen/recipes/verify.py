"""`auxgen verify`: prove a run's recorded accuracy and an export's labels; optionally measure them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from auxgen.errors import AuxgenError
from auxgen.paths import refuse_inside, refuse_under_file, regular_file_problem


class VerificationFailed(AuxgenError):
    """At least one check failed (exit 1, unlike bad usage's 2)."""

    exit_code = 1


def verify_command(
    run_dir: Path = typer.Argument(..., help="Run directory (from auxgen train)."),
    labels: Path = typer.Option(None, "--labels", "-l", help="An export to check: HDF5 file, shard or parquet folder."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last (the final epoch), best (the epoch with the best "
                                    "test accuracy: selected on the test set) or a .pt file of the run."),
    tolerance: float = typer.Option(0.0, "--tolerance", help="Allowed |accuracy difference| of the evaluation "
                                    "re-run (0: exact, for the run's own device and dtype)."),
    sample: int = typer.Option(512, "--sample", help="Labels re-derived with the generator (seeded random sample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the re-derivation sample."),
    atol: float = typer.Option(None, "--atol", show_default=False,
                               help=escape("Largest allowed |difference| of a re-derived label from the exported one "
                                           "[default: 1e-5 for float32 labels, 1e-3 for float16].")),
    retrain: int = typer.Option(0, "--retrain", help="Also retrain on the frozen labels for this many epochs, "
                                "next to single-task and random-label networks (same seeds, backbone, schedule)."),
    seeds: int = typer.Option(3, "--seeds", help="With --retrain: seeds per arm (frozen labels, single-task, random "
                              "labels); verdicts need an interval, so at least 2."),
    min_gain: float = typer.Option(None, "--min-gain", help="With --retrain: fail unless frozen labels beat "
                                   "single-task by this much accuracy (e.g. 0.005)."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda [default: the run's]."),
    data_root: str = typer.Option(None, "--data-root", help="Where the run's dataset is now, if it moved."),
    json_out: str = typer.Option(None, "--json", help="Write the report as JSON to this file ('-': stdout); an "
                                "existing file is replaced only when it is an earlier verify report."),
) -> None:
    """Re-run the evaluation of a checkpoint, check an export against its run, re-derive labels, retrain."""
    from auxgen.checkpoint import write_text_atomic
    from auxgen.verify import verify

    if json_out not in (None, "-"):
        _check_json_target(Path(json_out), run_dir, labels)
    report = verify(run_dir, labels, checkpoint, tolerance, sample, seed, atol, retrain, seeds, min_gain,
                    device, data_root)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if json_out == "-":
        print(text, end="")
    else:
        _print(report)
        if json_out:
            try:
                write_text_atomic(json_out, text)
            except OSError as e:
                raise AuxgenError(f"--json {json_out}: cannot write the report ({e.strerror or e})") from None
    if not report.passed:
        failed = [c.name for c in report.checks if c.status == "fail"]
        raise VerificationFailed(f"verification failed: {', '.join(failed)}")


def _check_json_target(target: Path, run_dir: Path, labels: Path | None) -> None:
    """--json names a file that can be written and lies outside the run and the export (checked before any work)."""
    if target.is_dir():
        raise AuxgenError(f"--json {target} is a folder; give a file name such as {target / 'report.json'}")
    refuse_under_file(target.parent, "--json")
    refuse_inside(target, (run_dir, labels), "--json", why="verify never writes into the run or the export")
    if os.path.lexists(target) and not _is_verify_report(target):
        raise AuxgenError(f"--json {target} exists and is not an earlier verify report; verify replaces only "
                          f"its own reports: choose a new file name or move that file away")


_REPORT_KEYS = {"run_dir", "checkpoint", "labels", "passed", "checks"}  # what VerifyReport.to_dict writes
_REPORT_MAX_BYTES = 64 << 20  # a report is kilobytes; a larger file is someone else's


def _is_verify_report(path: Path) -> bool:
    """Whether `path` is a plain file holding a report an earlier `verify --json` wrote (its keys and checks)."""
    if path.is_symlink() or regular_file_problem(path) or path.stat().st_size > _REPORT_MAX_BYTES:
        return False
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == _REPORT_KEYS and isinstance(data["checks"], list)


def _print(report) -> None:
    title = f"auxgen verify {report.run_dir} ({report.checkpoint})" + (f" + {report.labels}" if report.labels else "")
    table = Table(title=title, show_lines=True)
    table.add_column("check")
    table.add_column("result")
    table.add_column("details", overflow="fold")
    style = {"pass": "[green]pass[/green]", "fail": "[bold red]FAIL[/bold red]", "skip": "skip",
             "warn": "[yellow]warn[/yellow]"}
    for c in report.checks:
        table.add_row(c.name, style.get(c.status, c.status), c.reason)
    Console().print(table)
    Console().print("[green]all checks passed[/green]" if report.passed else "[bold red]verification failed[/bold red]")
