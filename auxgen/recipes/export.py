"""`auxgen export`: a run's soft auxiliary labels as HDF5, WebDataset shards or parquet tables, with a manifest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from auxgen.errors import AuxgenError


def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by auxgen train.", show_default=False),
    fmt: str = typer.Option("hdf5", "--format", "-f", help="Output format: hdf5 (one file), wds (tar shards) or "
                     "parquet (a folder of one table per split; needs pyarrow: pip install auxgen[parquet])."),
    out: Path = typer.Option(None, "--out", "-o", help="HDF5 file, or a folder for --format wds or parquet.",
                             show_default=False),
    checkpoint: str = typer.Option("last", "--checkpoint", help="Checkpoint to use: last (the final epoch), best "
                                    "(the epoch with the best test accuracy: selected on the test set) or a .pt file."),
    split: str = typer.Option("all", "--split", help="Splits to export: train, test or all."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage type of the soft labels: float32 or float16."),
    views: int = typer.Option(0, "--views", help="Labels for N seeded augmented views per image (0: the images)."),
    images: bool = typer.Option(True, "--images/--no-images",
                                help="Put the images into the shards (--no-images: label-only shards)."),
    shard_size: str = typer.Option(None, "--shard-size", help="Largest shard, e.g. 256MB, 1GB or bytes (default "
                                   "256MB).", show_default=False),
    max_count: int = typer.Option(None, "--max-count", help="Most samples per shard.", show_default=False),
    generator: bool = typer.Option(False, "--generator", help="Also write the generator as files that run without "
                                   "auxgen: a torch.export program (.pt2) and an ONNX model (.onnx)."),
    generator_format: str = typer.Option(None, "--generator-format", help="Generator files to write, comma-separated: "
                                         "pt2, onnx, torchscript (deprecated); default with --generator: pt2,onnx; "
                                         "implies --generator.", show_default=False),
    batch_size: int = typer.Option(500, "--batch-size", help="Rows per generator batch (recorded; recompute with it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --views draws."),
    data_root: str = typer.Option(None, "--data-root", help="Where the dataset lives now, if it moved since training.",
                                  show_default=False),
    device: str = typer.Option(None, "--device", help="Device to run the generator on (default: the run's choice).",
                               show_default=False),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export at --out."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted --format wds export at --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
) -> None:
    """Export soft auxiliary labels of a trained run as HDF5, WebDataset shards or parquet tables, with a manifest."""
    if out is None:
        raise AuxgenError("give --out: a file such as labels/run.h5 (hdf5), or a folder such as shards/run (wds) "
                          "or labels/run (parquet)")
    from auxgen.export.generator_files import DEFAULT_GENERATOR_FORMATS

    formats = generator_format if generator_format is not None else DEFAULT_GENERATOR_FORMATS if generator else ()
    if generator_format is not None and not generator_format.strip():
        raise AuxgenError("--generator-format is empty: name one or more of pt2, onnx, torchscript")
    from auxgen.api import export
    from auxgen.distributed import current

    summary = export(run_dir, out, format=fmt, checkpoint=checkpoint, split=split, dtype=dtype, views=views,
                     images=images, shard_size=shard_size, max_count=max_count, generator_formats=formats,
                     batch_size=batch_size, seed=seed, data_root=data_root, device=device, force=force,
                     resume=resume, show=not quiet)

    if not quiet and current().is_main:  # under torchrun, rank 0 reports for every process
        print_summary(summary)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def print_summary(s: dict) -> None:
    """The export summary as a table: where the files are, their sizes, counts and label statistics."""
    st = s["stats"]
    table = Table(title=f"auxgen export ({s['format']})", show_header=False)
    table.add_row("output", s["out"])
    table.add_row("manifest", s["manifest"])
    n_files = len(s["files"])
    table.add_row("files", f"{n_files} ({_size(s['total_bytes'])})" if n_files > 3 else
                  ", ".join(f"{f['path']} ({_size(f['bytes'])})" for f in s["files"]))
    table.add_row("samples", ", ".join(f"{k} {v}" for k, v in s["counts"].items())
                  + (f" x {s['views']} views" if s["views"] else ""))
    if s["resumed"]:
        table.add_row("resumed", ", ".join(f"{k} from sample {v}" for k, v in s["resumed"].items()))
    table.add_row("auxiliary classes", f"K = {s['num_aux']}, {st['aux_classes_used']} used as hard labels")
    table.add_row("usage entropy", f"{st['aux_usage_entropy']:.3f} of max {st['aux_usage_entropy_max']:.3f} nats")
    if st.get("aux_block_usage_frac") is not None:
        table.add_row("block usage", f"{100 * st['aux_block_usage_frac']:.1f}% of max entropy "
                                     f"(mean over primary blocks)")
    if st["aux_sample_entropy"] is not None:
        frac = st["aux_sample_entropy_frac"]
        table.add_row("per-sample entropy", f"{st['aux_sample_entropy']:.3f} nats"
                      + (f" ({100 * frac:.1f}% of max)" if frac is not None else ""))
    if s.get("samples_per_s"):
        table.add_row("speed", f"{s['samples_per_s']:,.0f} samples/s ({s['seconds']:.1f}s)")
    Console().print(table)
