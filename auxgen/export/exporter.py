"""`export_labels`: a run's generator over its data, written as HDF5 or WebDataset shards with a manifest."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import auxgen
from auxgen.checkpoint import load_checkpoint, sha256_file, write_json_atomic
from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export.format import (
    DEFAULT_SHARD_SIZE,
    FORMAT_NAME,
    FORMAT_VERSION,
    GENERATOR_NAME,
    HDF5_GENERATOR_SUFFIX,
    HDF5_MANIFEST_SUFFIX,
    MANIFEST_NAME,
    SPLITS,
    STATE_NAME,
    parse_size,
)
from auxgen.export.hdf5 import Hdf5Sink
from auxgen.export.labels import LabelStats, hard_and_entropy, iter_label_batches
from auxgen.export.manifest import file_entry, write_manifest
from auxgen.export.pipeline import BackgroundWriter, SampleAssembler
from auxgen.export.script import save_generator_script
from auxgen.export.views import draw_split_views
from auxgen.export.wds import WdsSink
from auxgen.run import LoadedRun, load_run, load_run_data, read_run_config, resolve_checkpoint

_OUR_FILES = re.compile(r"^(manifest\.json|generator\.pt|\.auxgen-export\.json|(train|test)-\d{6}\.tar|\..*\.tmp)$")
MIN_SHARD_SIZE = 64 * 1024


def export_labels(run_dir: str | Path, out: str | Path, fmt: str = "hdf5", checkpoint: str = "best",
                  split: str = "all", dtype: str = "float32", views: int = 0, images: bool = True,
                  shard_size: int | str | None = None, max_count: int | None = None, generator_script: bool = False,
                  force: bool = False, resume: bool = False, batch_size: int = 500, seed: int = 0,
                  data_root: str | None = None, device: str | None = None, show: bool = False) -> dict[str, Any]:
    """Export a run's soft auxiliary labels (see docs/format.md); returns a summary of files, counts and label stats."""
    out = Path(out)
    size_limit = _check_options(fmt, split, dtype, views, shard_size, max_count, force, resume, batch_size)
    splits = list(SPLITS) if split == "all" else [split]
    if fmt == "hdf5":
        _check_hdf5_out(out, force)
    else:
        _check_wds_out(out, force, resume)
    run = _load(run_dir, checkpoint, device, data_root)
    data = load_run_data(run, check=True)
    if data.num_classes != run.hier.num_primary:
        raise AuxgenError(f"the data has {data.num_classes} classes but the run's psi covers {run.hier.num_primary}")
    pad = int(run.meta["data"]["pad"])
    info = _info(run, data, checkpoint, splits, dtype, views, pad, seed, batch_size)
    t0 = time.perf_counter()
    if fmt == "hdf5":
        result = _export_hdf5(run, data, out, info, splits, dtype, views, pad, seed, batch_size, generator_script,
                              force, show)
    else:
        info.update(images=bool(images), shard_size=size_limit, max_count=max_count)
        result = _export_wds(run, data, out, info, splits, dtype, views, pad, seed, batch_size, generator_script,
                             images, size_limit, max_count, resume, show)
    seconds = time.perf_counter() - t0
    computed = result.pop("computed")
    result.update(seconds=seconds, samples_per_s=computed / seconds if seconds > 0 else None,
                  samples_computed=computed)
    return result


# ------------------------------------------------------------------------------ checks
def _check_options(fmt: str, split: str, dtype: str, views: int, shard_size: int | str | None,
                   max_count: int | None, force: bool, resume: bool, batch_size: int) -> int:
    if fmt not in ("hdf5", "wds"):
        raise AuxgenError(f"--format {fmt!r}: choose hdf5 or wds")
    if split not in ("train", "test", "all"):
        raise AuxgenError(f"--split {split!r}: choose train, test or all")
    if dtype not in ("float32", "float16"):
        raise AuxgenError(f"--dtype {dtype!r}: choose float32 or float16")
    if views < 0:
        raise AuxgenError(f"--views {views}: give 0 (no views) or a positive number of views per image")
    if batch_size < 1:
        raise AuxgenError(f"--batch-size {batch_size}: must be at least 1")
    if force and resume:
        raise AuxgenError("give --force (start over) or --resume (continue), not both")
    size = parse_size(shard_size)
    if fmt == "hdf5":
        for flag, given in (("--resume", resume), ("--shard-size", shard_size is not None),
                            ("--max-count", max_count is not None)):
            if given:
                raise AuxgenError(f"{flag} applies to --format wds only")
        return 0
    if max_count is not None and max_count < 1:
        raise AuxgenError(f"--max-count {max_count}: must be at least 1")
    size = DEFAULT_SHARD_SIZE if size is None else size
    if size < MIN_SHARD_SIZE:
        raise AuxgenError(f"--shard-size {shard_size}: must be at least {MIN_SHARD_SIZE // 1024}KiB")
    return size


def _check_hdf5_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise AuxgenError(f"--out {out} is a folder; give a file name such as {out / 'labels.h5'}")
    existing = [p for p in _hdf5_paths(out) if p.exists()]
    if existing and not force:
        raise AuxgenError(f"{existing[0]} exists; pass --force to replace the export, or choose another --out")


def _hdf5_paths(out: Path) -> tuple[Path, Path, Path]:
    return out, out.with_name(out.name + HDF5_MANIFEST_SUFFIX), out.with_name(out.name + HDF5_GENERATOR_SUFFIX)


def _check_wds_out(out: Path, force: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise AuxgenError(f"--out {out} is a file; shards go into a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    state, manifest = out / STATE_NAME, out / MANIFEST_NAME
    if resume:
        if not state.is_file():
            what = "is a finished export (it has a manifest)" if manifest.is_file() else "holds no unfinished export"
            raise AuxgenError(f"--resume: {out} {what}; nothing to resume")
        return
    if not names:
        return
    foreign = [n for n in names if not _OUR_FILES.match(n)]
    if foreign:
        raise AuxgenError(f"--out {out} holds files auxgen did not write ({', '.join(foreign[:3])}); "
                          f"choose an empty or new folder")
    if not force:
        if state.is_file():
            raise AuxgenError(f"{out} holds an unfinished export; pass --resume to continue it "
                              f"or --force to start over")
        raise AuxgenError(f"{out} already holds an export; pass --force to replace it, or choose another --out")
    # the manifest goes first, so a half-replaced folder never looks complete
    for name in [MANIFEST_NAME] + [n for n in names if n != MANIFEST_NAME]:
        (out / name).unlink(missing_ok=True)


def _load(run_dir: str | Path, checkpoint: str, device: str | None, data_root: str | None) -> LoadedRun:
    meta = read_run_config(run_dir)
    if checkpoint not in ("best", "last"):  # a foreign checkpoint: say clearly what does not match
        state = load_checkpoint(resolve_checkpoint(Path(run_dir), checkpoint))
        if state.get("psi") != meta["psi"]:
            raise AuxgenError(f"checkpoint {checkpoint} has psi {state.get('psi')} but {run_dir} has {meta['psi']}; "
                              f"use a checkpoint of this run")
        if state.get("data_fingerprint") not in (None, meta["data"]["fingerprint"]):
            raise AuxgenError(f"checkpoint {checkpoint} was trained on different data ({state.get('dataset')}) "
                              f"than {run_dir} ({meta['data']['name']}); use a checkpoint of this run")
    try:
        run = load_run(run_dir, checkpoint, device=device, data_root=data_root)
    except RuntimeError as e:  # weights of another architecture
        raise AuxgenError(f"checkpoint {checkpoint} does not fit the models of {run_dir} "
                          f"({str(e).splitlines()[0]})") from None
    if run.generator is None:
        raise AuxgenError(f"{run_dir} was trained with --method {run.cfg.method}, which has no label generator; "
                          f"export needs a maxl run")
    return run


def _readable(*paths: Path) -> None:
    """Give outputs the usual permissions (temporary files are created private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        if p.exists():
            os.chmod(p, 0o666 & ~umask)


def _info(run: LoadedRun, data: Data, checkpoint: str, splits: list[str], dtype: str, views: int, pad: int,
          seed: int, batch_size: int) -> dict[str, Any]:
    """Fields shared by the manifest and the HDF5 attributes."""
    return {"auxgen_version": auxgen.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "psi": list(run.hier.psi), "num_primary": run.hier.num_primary, "num_aux": run.hier.num_aux,
            "dtype": dtype, "views": views, "pad": pad, "seed": seed, "batch_size": batch_size,
            "splits": splits, "checkpoint": checkpoint, "checkpoint_sha256": run.checkpoint_sha256,
            "config_sha256": run.config_sha256, "run_dir": str(run.run_dir), "dataset": data.name,
            "dataset_fingerprint": run.meta["data"]["fingerprint"], "test_acc": run.recorded_test_acc(),
            "device": str(run.device)}


# ------------------------------------------------------------------------------ the compute loop
def _compute(run: LoadedRun, data: Data, sink: Any, splits: list[str], views: int, pad: int, seed: int,
             batch_size: int, starts: dict[str, int], begin: Any, show: bool) -> int:
    """Run the generator over the splits and feed the sink on a writer thread; returns samples computed."""
    v = max(views, 1)
    total = sum(len(getattr(data, s)) - starts.get(s, 0) for s in splits)
    writer = BackgroundWriter(maxsize=4)
    done = 0
    with _Progress(total, show) as progress:
        try:
            for s in splits:
                sp = getattr(data, s)
                start = starts.get(s, 0)
                view_params = draw_split_views(len(sp), views, pad, seed) if views else None
                writer.call(begin, s, sp, view_params, start)
                if start >= len(sp):
                    writer.call(sink.end_split)
                    continue
                asm = SampleAssembler(s, sp.labels.numpy(), views, start)
                for r0, soft in iter_label_batches(run.generator, sp.images, sp.labels, run.device, batch_size,
                                                   view_params, pad, start * v):
                    hard, ent = hard_and_entropy(soft)
                    for chunk in asm.add(r0, soft.cpu().numpy(), hard.cpu().numpy(), ent.cpu().numpy()):
                        writer.call(sink.write, chunk)
                        done += len(chunk)
                        progress.update(done)
                writer.call(sink.end_split)
            writer.call(sink.close)
            writer.close()
        except BaseException:
            writer.abort()
            sink.abort()
            raise
    return done


class _Progress:
    """A rich bar with samples/s on a terminal; silent otherwise (the summary reports the speed)."""

    def __init__(self, total: int, show: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = show and self.console.is_terminal
        self.total = total

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("export", total=self.total, speed="")
            self.t0 = time.perf_counter()
        return self

    def update(self, done: int) -> None:
        if self.enabled:
            speed = done / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, completed=done, speed=f"{speed:,.0f} samples/s")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


def _write_generator(run: LoadedRun, data: Data, path: Path, info: dict[str, Any], splits: list[str]) -> None:
    sp = getattr(data, splits[0])
    n = min(8, len(sp))
    meta = {k: info[k] for k in ("psi", "num_primary", "num_aux", "checkpoint_sha256", "config_sha256", "dataset")}
    meta.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, input="uint8 [B, C, H, W] images, int64 [B]",
                image_shape=list(data.image_shape))
    save_generator_script(run.generator, path, meta, example=(sp.images[:n], sp.labels[:n]))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ HDF5
def _export_hdf5(run: LoadedRun, data: Data, out: Path, info: dict[str, Any], splits: list[str], dtype: str,
                 views: int, pad: int, seed: int, batch_size: int, generator_script: bool, force: bool,
                 show: bool) -> dict[str, Any]:
    out, manifest_path, gen_path = _hdf5_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
             **{k: v for k, v in info.items() if k not in ("psi", "test_acc", "splits", "run_dir", "device")},
             "psi": np.asarray(info["psi"], dtype=np.int64),
             "test_acc": float("nan") if info["test_acc"] is None else float(info["test_acc"]),
             "run_config": json.dumps(run.meta, sort_keys=True)}
    stats = LabelStats(run.hier.psi)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        sink = Hdf5Sink(tmp, attrs, dtype, run.hier.num_aux, views, stats)

        def begin(s: str, sp: Any, view_params: torch.Tensor | None, start: int) -> None:
            sink.begin_split(s, sp.keys, sp.labels.numpy(), None if view_params is None else view_params.numpy(),
                             data.split_fingerprint(s))

        computed = _compute(run, data, sink, splits, views, pad, seed, batch_size, {}, begin, show)
        if force:
            manifest_path.unlink(missing_ok=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    files = [file_entry(out, out.parent)]
    if generator_script:
        _write_generator(run, data, gen_path, info, splits)
        files.append(file_entry(gen_path, out.parent))
    else:
        gen_path.unlink(missing_ok=True)  # a stale generator of a replaced export
    counts = {s: len(getattr(data, s)) for s in splits}
    info = {**info, "generator": gen_path.name if generator_script else None}
    write_manifest(manifest_path, "hdf5", info, files, counts)
    _readable(out, manifest_path, gen_path)
    return _summary("hdf5", out, manifest_path, files, counts, stats, run, views, dtype, computed, {})


# ------------------------------------------------------------------------------ WebDataset
def _export_wds(run: LoadedRun, data: Data, out: Path, info: dict[str, Any], splits: list[str], dtype: str,
                views: int, pad: int, seed: int, batch_size: int, generator_script: bool, images: bool,
                shard_size: int, max_count: int | None, resume: bool, show: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_NAME
    params = {k: info[k] for k in ("checkpoint_sha256", "config_sha256", "dataset_fingerprint", "splits", "dtype",
                                   "views", "pad", "seed", "batch_size", "device", "images", "shard_size",
                                   "max_count")}
    params["format_version"] = FORMAT_VERSION
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in splits}
    if resume:
        state = _read_state(state_path)
        changed = sorted(k for k in set(params) | set(state["params"]) if params.get(k) != state["params"].get(k))
        if changed:
            raise AuxgenError(f"--resume: the export in {out} was started with different {', '.join(changed)}; "
                              f"repeat its options or start over with --force")
        info["created"] = state.get("created", info["created"])
        shards = _kept_shards(out, state["shards"], splits)
    starts = {s: sum(r["count"] for r in shards[s]) for s in splits}
    resumed = {s: n for s, n in starts.items() if n}

    def save_state() -> None:
        write_json_atomic(state_path, {"params": params, "created": info["created"], "shards": shards})

    def on_record(record: dict[str, Any]) -> None:
        shards[record["split"]].append(record)
        save_state()

    save_state()
    sink = WdsSink(out, dtype, run.hier.num_aux, views, max_count or 2**62, shard_size, run.hier.psi, on_record)

    def begin(s: str, sp: Any, view_params: torch.Tensor | None, start: int) -> None:
        sink.begin_split(s, sp.keys, sp.images.numpy() if images else None,
                         None if view_params is None else view_params.numpy(), start, len(shards[s]))

    computed = _compute(run, data, sink, splits, views, pad, seed, batch_size, starts, begin, show)
    files = [{"path": r["path"], "bytes": r["bytes"], "sha256": r["sha256"]} for s in splits for r in shards[s]]
    gen_path = out / GENERATOR_NAME
    if generator_script:
        _write_generator(run, data, gen_path, info, splits)
        files.append(file_entry(gen_path, out))
    counts = {s: sum(r["count"] for r in shards[s]) for s in splits}
    expected = {s: len(getattr(data, s)) for s in splits}
    if counts != expected:  # a bug, not a user error: never write a manifest for an incomplete export
        raise RuntimeError(f"shards hold {counts} samples, expected {expected}")
    stats = LabelStats(run.hier.psi)
    for s in splits:
        for r in shards[s]:
            stats.merge(LabelStats.from_dict(run.hier.psi, r["stats"]))
    info = {**info, "generator": GENERATOR_NAME if generator_script else None}
    manifest_path = out / MANIFEST_NAME
    write_manifest(manifest_path, "wds", info, files, counts)
    _readable(manifest_path, gen_path, *(out / f["path"] for f in files))
    state_path.unlink()
    return _summary("wds", out, manifest_path, files, counts, stats, run, views, dtype, computed, resumed)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        state["params"], state["shards"]  # noqa: B018 - both must be there
        return state
    except (json.JSONDecodeError, KeyError, TypeError):
        raise AuxgenError(f"{path} is damaged; start the export over with --force") from None


def _kept_shards(out: Path, recorded: dict[str, list[dict[str, Any]]],
                 splits: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Finished shards whose size and sha256 check out, up to the first that does not; the rest are removed."""
    kept: dict[str, list[dict[str, Any]]] = {}
    for s in splits:
        kept[s] = []
        for r in recorded.get(s, []):
            p = out / r["path"]
            if p.is_file() and p.stat().st_size == r["bytes"] and sha256_file(p) == r["sha256"]:
                kept[s].append(r)
            else:
                break
    keep_names = {r["path"] for rs in kept.values() for r in rs}
    for p in out.iterdir():
        if _OUR_FILES.match(p.name) and p.name.endswith((".tar", ".tmp")) and p.name not in keep_names:
            p.unlink()
    return kept


def _summary(kind: str, out: Path, manifest: Path, files: list[dict[str, Any]], counts: dict[str, int],
             stats: LabelStats, run: LoadedRun, views: int, dtype: str, computed: int,
             resumed: dict[str, int]) -> dict[str, Any]:
    return {"format": kind, "out": str(out), "manifest": str(manifest), "files": files,
            "total_bytes": sum(f["bytes"] for f in files), "counts": counts, "psi": list(run.hier.psi),
            "num_aux": run.hier.num_aux, "views": views, "dtype": dtype, "checkpoint": str(run.checkpoint_path),
            "stats": stats.summary(), "resumed": resumed, "computed": computed}

