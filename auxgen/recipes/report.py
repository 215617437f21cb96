"""`auxgen report`: one self-contained HTML page (with PNG figures beside it) of what runs learned."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from auxgen.errors import AuxgenError


def report_command(
    runs: list[Path] = typer.Argument(..., metavar="RUN", help="Run directories (from auxgen train); curves "
                                      "are overlaid, labels are shown for the first.", show_default=False),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for index.html and its figures (outside the runs).",
                             show_default=False),
    labels: Path = typer.Option(None, "--labels", "-l", help="An export of the first run (HDF5 file or shard "
                                "folder) to show instead of running its generator.", show_default=False),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last (the final epoch), best (the epoch with the best "
                                    "test accuracy: selected on the test set) or a .pt file of the first run."),
    split: str = typer.Option("test", "--split", help="Split whose labels are shown: test or train."),
    max_samples: int = typer.Option(5000, "--max-samples", help="Most samples whose labels are computed or read "
                                    "(a seeded choice beyond that)."),
    examples: int = typer.Option(8, "--examples", help="Most confident images shown per auxiliary class."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample choice."),
    device: str = typer.Option(None, "--device", help="Where the generator runs: auto (the default), cpu or cuda.",
                               show_default=False),
    data_root: str = typer.Option(None, "--data-root", help="Where the run's dataset is now, if it moved.",
                                  show_default=False),
    force: bool = typer.Option(False, "--force", help="Replace an earlier report at --out (only its own files)."),
) -> None:
    """Write an HTML report of training curves and the generated labels: open OUT/index.html in a browser."""
    from auxgen.report import build_report

    if out is None:
        raise AuxgenError("give --out: a folder for the report, e.g. reports/run1")
    if examples < 1:
        raise AuxgenError("--examples must be at least 1")
    # the page's footer repeats the command that made it, when this process is that command
    command = ("auxgen report " + " ".join(shlex.quote(a) for a in sys.argv[2:])
               if len(sys.argv) > 1 and sys.argv[1] == "report" else None)
    result = build_report(runs, out, labels=labels, checkpoint=checkpoint, split=split, max_samples=max_samples,
                          seed=seed, device=device, data_root=data_root, force=force, examples=examples,
                          command=command)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {result.index} ({len(result.files)} files; open it in a browser)")
