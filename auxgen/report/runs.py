"""A run directory as the report reads it: config, per-epoch metrics, the chosen checkpoint.

Only reads. A folder that is not a finished-enough auxgen run (no config.json, no run marker,
no recorded epoch, no checkpoint) is refused with a one-line AuxgenError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxgen.checkpoint import sha256_file
from auxgen.errors import AuxgenError
from auxgen.run import resolve_checkpoint
from auxgen.rundir import RUN_MARKER, RunDir


@dataclass
class RunInfo:
    """What the report shows about one run, read from its directory."""

    run_dir: Path
    meta: dict[str, Any]                 # config.json
    history: list[dict[str, Any]]        # metrics.jsonl, one dict per epoch
    checkpoint_path: Path
    checkpoint_sha256: str
    config_sha256: str
    summary: dict[str, Any] | None = None  # summary.json when training finished
    name: str = ""                       # legend name: the folder, made unique among the report's runs
    notes: list[str] = field(default_factory=list)

    @property
    def train_cfg(self) -> dict[str, Any]:
        return self.meta.get("train", {}) if isinstance(self.meta.get("train"), dict) else {}

    @property
    def method(self) -> str:
        return str(self.train_cfg.get("method", "?"))

    @property
    def label(self) -> str:
        """Legend entry: folder and method."""
        return f"{self.name} ({self.method})"

    @property
    def has_generator(self) -> bool:
        return self.method == "maxl"

    @property
    def epochs_planned(self) -> int | None:
        e = self.train_cfg.get("epochs")
        return e if isinstance(e, int) else None

    @property
    def finished(self) -> bool:
        return self.epochs_planned is None or len(self.history) >= self.epochs_planned


def read_run(run_dir: str | Path, checkpoint: str = "last") -> RunInfo:
    """Read a run directory for the report; refuse what is not an auxgen run with at least one epoch."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AuxgenError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise AuxgenError(f"{run_dir} is a file, not a run directory")
    rd = RunDir(run_dir)
    if not rd.config.is_file():
        raise AuxgenError(f"{run_dir} is not an auxgen run directory (no config.json)")
    if not rd.is_run:
        raise AuxgenError(f"{run_dir} is not an auxgen run directory (no {RUN_MARKER} marker; auxgen train writes it)")
    try:
        meta = json.loads(rd.config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise AuxgenError(f"{rd.config} is not valid JSON; the run directory is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("train"), dict):
        raise AuxgenError(f"{rd.config} is not an auxgen run config (no 'train' options)")
    history = _read_metrics(run_dir)
    # an explicit --checkpoint PATH names one file; best/last are looked up in each run
    ckpt = resolve_checkpoint(run_dir, checkpoint) if checkpoint in ("best", "last") else Path(checkpoint)
    if not ckpt.is_file():
        raise AuxgenError(f"checkpoint {ckpt} does not exist; use best, last or a .pt file")
    summary = None
    if rd.summary.is_file():
        try:
            s = json.loads(rd.summary.read_text(encoding="utf-8"))
            summary = s if isinstance(s, dict) else None
        except (ValueError, UnicodeDecodeError):
            summary = None  # the curves come from metrics.jsonl; a damaged summary costs nothing here
    info = RunInfo(run_dir, meta, history, ckpt, sha256_file(ckpt), sha256_file(rd.config), summary)
    if not info.finished:
        info.notes.append(f"training unfinished: {len(history)} of {info.epochs_planned} epochs recorded")
    return info


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise AuxgenError(f"{run_dir} has no metrics.jsonl: training has not finished an epoch")
    history = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise AuxgenError(f"{path} is not UTF-8 text; the run directory is damaged") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise AuxgenError(f"{path} line {n} is not JSON; the run directory is damaged") from None
        if isinstance(row, dict):
            history.append(row)
    if not history:
        raise AuxgenError(f"{run_dir} has an empty metrics.jsonl: training has not finished an epoch")
    return history


def name_runs(runs: list[RunInfo]) -> None:
    """Give each run a legend name: its folder, with parent folders added until the names differ."""
    depth = 1
    while True:
        names = ["/".join(r.run_dir.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names) or depth > 8:
            break
        depth += 1
    seen: dict[str, int] = {}
    for r, n in zip(runs, names, strict=True):
        seen[n] = seen.get(n, 0) + 1
        r.name = n if seen[n] == 1 else f"{n} #{seen[n]}"  # the same folder given twice
