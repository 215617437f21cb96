"""The resume state of a shard export: one prepare-or-resume, one record of finished shards, one clean-up.

`.auxgen-export.json` holds what the export is (`params`), when it began (`created`) and its
finished shards by split. A one-process export records each shard there as it finishes one and
resumes at the first shard that is missing or damaged. A multi-process export (auxgen.export.ranks)
also stores its `plan` (every shard's first sample and count); each process records its shards
in its own file, and a resume keeps every finished shard that fits the plan and checks out.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxgen.checkpoint import sha256_file, write_json_atomic
from auxgen.errors import AuxgenError
from auxgen.export.format import FORMAT_VERSION, MANIFEST_NAME, PARQUET_MANIFEST_NAME, STATE_NAME
from auxgen.export.layout import is_ours, is_partial, is_shard, rank_states, remove
from auxgen.export.options import ExportOptions
from auxgen.label_stats import LabelStats

# what an export must share with the one it resumes (any difference would change its files)
STATE_PARAMS = ("checkpoint_sha256", "config_sha256", "dataset_fingerprint", "splits", "dtype", "views", "pad",
                "seed", "batch_size", "device", "images", "shard_size", "max_count")
Record = dict[str, Any]     # a finished shard: path, split, start, count, bytes, sha256, stats
Plan = dict[str, list[tuple[int, int]]]  # per split, (first sample, count) of each shard


def state_params(info: dict[str, Any]) -> dict[str, Any]:
    return {**{k: info[k] for k in STATE_PARAMS}, "format_version": FORMAT_VERSION}


@dataclass
class Prepared:
    """The folder made ready (rank 0 decides, every process gets it)."""

    created: str                          # the export's `created`: an earlier start's when resuming
    kept: dict[str, list[Record]]         # finished shards kept, per split, in order
    plan: Plan | None = None              # a multi-process export's shards, when resuming one
    made: bool = False                    # whether this call made the folder


def prepare(out: Path, opts: ExportOptions, params: dict[str, Any], created: str, psi: tuple[int, ...],
            planned: bool) -> Prepared:
    """Without --resume, the folder emptied of an earlier export (or made); with it, the state checked against
    `params` and the finished shards that check out kept (the rest removed)."""
    if not opts.resume:
        if out.is_dir():
            clear(out)
        made = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        return Prepared(created, {s: [] for s in opts.splits}, made=made)
    state = read_state(out / STATE_NAME)
    changed = sorted(k for k in set(params) | set(state["params"]) if params.get(k) != state["params"].get(k))
    if changed:
        raise AuxgenError(f"--resume: the export in {out} was started with different {', '.join(changed)}; "
                          f"repeat its options or start over with --force")
    plan = _read_plan(out / STATE_NAME, state, opts.splits) if planned else None
    if plan is None:
        kept = _kept_in_order(out, state, opts.splits, psi)
    else:
        kept = _kept_in_plan(out, state, opts.splits, plan, psi)
    names = {r["path"] for rs in kept.values() for r in rs}
    old_records = set(rank_states(out))
    for p in list(out.iterdir()):  # unfinished or unverifiable shards and old per-process records go
        if (is_partial(p.name) and p.name not in names) or p in old_records:
            p.unlink()
    return Prepared(state.get("created", created), kept, plan)


def _read_plan(path: Path, state: dict[str, Any], splits: list[str]) -> Plan:
    """A multi-process export's plan, with every split it exports (anything else is damage)."""
    if state.get("plan") is None:
        raise AuxgenError(f"--resume: the export in {path.parent} was started by one process; resume it with one "
                          f"process (without torchrun)")
    try:
        plan = {s: [(a, n) for a, n in v] for s, v in state["plan"].items()}
    except (TypeError, ValueError, AttributeError):
        raise _damaged(path) from None
    if not set(splits) <= set(plan):
        raise _damaged(path)
    return plan


def save(out: Path, params: dict[str, Any], prep: Prepared, plan: Plan | None) -> None:
    """The state an export starts (or resumes) with; a folder this export made and cannot write into goes again."""
    head = {"params": params, "created": prep.created, **({} if plan is None else {"plan": plan})}
    try:
        write_json_atomic(out / STATE_NAME, {**head, "shards": prep.kept})
    except BaseException:
        if prep.made:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


@dataclass
class ShardLog:
    """Where shards are recorded as they finish: the state itself (one process), or this process's own file
    (with `kept` None: a multi-process export, whose rank 0 merges the records at the end)."""

    path: Path
    head: dict[str, Any]
    kept: dict[str, list[Record]] | None
    new: list[Record] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.new.append(record)
        shards: Any = self.new
        if self.kept is not None:
            shards = {s: [*rs, *(r for r in self.new if r["split"] == s)] for s, rs in self.kept.items()}
        write_json_atomic(self.path, {**self.head, "shards": shards})


def finished(out: Path) -> None:
    """Remove the resume state and the per-process records (after the manifest is written)."""
    for p in [out / STATE_NAME, *rank_states(out)]:
        p.unlink(missing_ok=True)


def clear(out: Path) -> None:
    """Remove an earlier export from a folder (the caller made sure it holds nothing else)."""
    names = sorted(p.name for p in out.iterdir() if is_ours(p.name))
    # the manifest goes first, so a half-replaced folder never looks complete
    first = (MANIFEST_NAME, PARQUET_MANIFEST_NAME)
    for name in [n for n in names if n in first] + [n for n in names if n not in first]:
        remove(out / name)  # a parquet split folder too


def read_state(path: Path) -> dict[str, Any]:
    """The resume state, checked for the structure the exporter writes; anything else is damage."""
    try:
        state = json.loads(path.read_text())
    except (ValueError, OSError):
        raise _damaged(path) from None
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict) \
            or not isinstance(state.get("shards"), dict):
        raise _damaged(path)
    for split, records in state["shards"].items():
        if not isinstance(records, list) or not all(_well_formed(r, split) for r in records):
            raise _damaged(path)
    return state


def _damaged(path: Path) -> AuxgenError:
    return AuxgenError(f"{path} is damaged; start the export over with --force")


def _well_formed(r: Any, split: str) -> bool:
    """A record as the exporter writes it, naming a shard of `split` inside the folder."""
    return (isinstance(r, dict) and isinstance(r.get("path"), str) and is_shard(r["path"], split)
            and isinstance(r.get("count"), int) and r["count"] > 0 and isinstance(r.get("bytes"), int)
            and isinstance(r.get("sha256"), str) and isinstance(r.get("stats"), dict))


def _intact(out: Path, r: Record) -> bool:
    """The shard is on disk with the recorded size and sha256."""
    p = out / r["path"]
    return p.is_file() and p.stat().st_size == r["bytes"] and sha256_file(p) == r["sha256"]


def _stats_ok(psi: tuple[int, ...], r: Record) -> bool:
    try:
        LabelStats.from_dict(psi, r["stats"])
    except (KeyError, TypeError, ValueError, RuntimeError):
        return False
    return True


def _kept_in_order(out: Path, state: dict[str, Any], splits: list[str],
                   psi: tuple[int, ...]) -> dict[str, list[Record]]:
    """One process: finished shards that check out, up to the first that does not (its writer continues there)."""
    kept: dict[str, list[Record]] = {}
    for s in splits:
        kept[s] = []
        for r in state["shards"].get(s, []):
            if not _intact(out, r):
                break
            if not _stats_ok(psi, r):
                raise _damaged(out / STATE_NAME)
            kept[s].append(r)
    return kept


def _kept_in_plan(out: Path, state: dict[str, Any], splits: list[str], plan: Plan,
                  psi: tuple[int, ...]) -> dict[str, list[Record]]:
    """Several processes: every recorded shard (in the state or a process's own file) that is the plan's
    shard of its name and checks out, whichever others are missing."""
    found = [r for rs in state["shards"].values() for r in rs]
    for p in rank_states(out):
        try:
            found += [r for r in json.loads(p.read_text()).get("shards", []) if isinstance(r, dict)]
        except (ValueError, OSError, AttributeError):
            continue  # a process killed while writing its record: its shards are simply written again
    kept: dict[str, Record] = {}
    for r in found:
        split = r.get("split")
        if not (isinstance(split, str) and _well_formed(r, split)):
            continue
        i = int(r["path"][len(split) + 1:-len(".tar")])  # the shard's number, from its (checked) name
        if (i < len(plan.get(split, [])) and (r.get("start"), r["count"]) == tuple(plan[split][i])
                and _intact(out, r) and _stats_ok(psi, r)):
            kept[r["path"]] = r
    return {s: sorted((r for r in kept.values() if r["split"] == s), key=lambda r: r["start"]) for s in splits}
