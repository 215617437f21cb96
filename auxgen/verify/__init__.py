"""`auxgen verify` as plain functions: each check returns a `CheckResult` with figures and a reason.

1. evaluation   re-run the primary-task test evaluation of a checkpoint and compare it with the
                accuracy the run recorded (exact on the same device and dtype);
2. integrity    an export (HDF5 file, shard or parquet folder) against its manifest, docs/format.md and the run;
3. rederivation recompute a seeded sample of labels with the run's generator;
4. quality      retrain a fresh network on the frozen labels next to a single-task one (optional).

Nothing here writes anywhere: the run and the export are only read.
"""

from __future__ import annotations

from pathlib import Path

from auxgen.errors import AuxgenError
from auxgen.export.read import Export, ExportSplit, manifest_path, read_export
from auxgen.export.source import check_run_dir, open_run
from auxgen.run import load_run_data
from auxgen.verify.evaluation import check_evaluation
from auxgen.verify.integrity import check_integrity
from auxgen.verify.quality import check_quality, retrain
from auxgen.verify.rederivation import check_rederivation, soft_labels
from auxgen.verify.result import CheckResult, Report

__all__ = ["CheckResult", "Export", "ExportSplit", "Report", "check_evaluation", "check_integrity",
           "check_quality", "check_rederivation", "manifest_path", "read_export", "retrain", "soft_labels", "verify"]


def verify(run_dir: str | Path, labels: str | Path | None = None, checkpoint: str = "last",
           tolerance: float = 0.0, sample: int = 512, seed: int = 0, atol: float | None = None,
           retrain_epochs: int = 0, seeds: int = 3, min_gain: float | None = None,
           device: str | None = None, data_root: str | None = None) -> Report:
    """Run every applicable check. Bad usage raises AuxgenError; failures are results."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)  # not a run directory: bad usage
    if sample < 1:
        raise AuxgenError("--sample must be at least 1")
    if retrain_epochs < 0:
        raise AuxgenError("--retrain must be a number of epochs (>= 1)")
    if seeds < 1:
        raise AuxgenError("--seeds must be at least 1")
    if retrain_epochs and labels is None:
        raise AuxgenError("--retrain needs --labels (the export to retrain on)")
    if tolerance < 0:
        raise AuxgenError("--tolerance must be >= 0")
    if checkpoint not in ("best", "last") and not Path(checkpoint).is_file():
        raise AuxgenError(f"--checkpoint {checkpoint}: no such file; use best, last or a .pt file")  # bad usage
    export = read_export(labels) if labels is not None else None  # a FIFO or device is refused, not read
    report = Report(str(run_dir), checkpoint, None if labels is None else str(labels), [])
    others = (["integrity", "rederivation"] if export else []) + (["quality"] if retrain_epochs else [])
    try:
        run = open_run(run_dir, checkpoint, device=device, data_root=data_root)
    except AuxgenError as e:
        # a missing or damaged checkpoint fails verification; the other checks need it and cannot run
        return _not_run(report, f"the run cannot be loaded: {e}", "the run's checkpoint cannot be loaded", others)
    data = load_run_data(run, check=False)  # a changed dataset is reported by the checks, not refused
    if data.num_classes != run.hier.num_primary:
        # a tree that gained or lost a class: its labels are outside the model's outputs, so no check can run
        return _not_run(report, f"the dataset at {run.cfg.data_root} differs from the one {run_dir} was trained on "
                        f"(fingerprint mismatch: {data.num_classes} classes now, the run has {run.hier.num_primary})",
                        "the dataset differs from the run's", others)
    report.checks.append(check_evaluation(run, data, tolerance))
    if export is not None:
        integrity = check_integrity(run, data, export)
        report.checks.append(integrity)
        report.checks.append(check_rederivation(run, data, export, sample, seed, atol,
                                                load_generators=integrity.status == "pass"))
        if retrain_epochs:
            report.checks.append(check_quality(run, data, export, retrain_epochs, None, seeds, min_gain))
    return report


def _not_run(report: Report, why: str, short: str, others: list[str]) -> Report:
    """The evaluation fails for `why`; the other checks are failures that could not run."""
    report.checks.append(CheckResult("evaluation", "fail", why))
    report.checks += [CheckResult(name, "fail", f"not run: {short}") for name in others]
    return report
