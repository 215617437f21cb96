"""`export_labels`: a run's generator over its data, written as HDF5, WebDataset shards or parquet tables with a
manifest.

One path for one process and for several (`torchrun ... -m auxgen export`, auxgen.export.ranks):
the run is loaded and every input checked, rank 0 first, before anything is written; the labels
come from a source stage (computed here, or gathered from every process); the folder is prepared
or resumed (auxgen.export.state); the sinks take the labels on a writer thread; and rank 0
finishes: generator files, the manifest, the summary. With one process every collective is a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from webdataset.tariterators import base_plus_ext

import auxgen
import auxgen.export.ranks as ranks
import auxgen.export.state as state
from auxgen import distributed
from auxgen.data import DATASETS, Data
from auxgen.errors import AuxgenError
from auxgen.export.baseline import baseline_batches, check_exportable
from auxgen.export.format import (
    EXPORT_FILE_MODE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PARQUET_MANIFEST_NAME,
    STATE_NAME,
    wds_key,
)
from auxgen.export.generator_files import GENERATOR_FORMATS, generator_path, save_generator
from auxgen.export.hdf5 import Hdf5Sink
from auxgen.export.labels import Batches, local_batches, sample_chunks
from auxgen.export.layout import (
    export_base,
    hdf5_paths,
    hdf5_temps,
    is_ours,
    is_resume_state,
    is_temp,
    manifest_of,
    new_hdf5_temp,
    not_ours,
    rank_state_name,
    remove,
)
from auxgen.export.manifest import created_timestamp, file_entry, write_manifest
from auxgen.export.options import ExportOptions
from auxgen.export.parquet import ParquetSink
from auxgen.export.pipeline import BackgroundWriter
from auxgen.export.sink import Sink, SplitSource
from auxgen.export.source import open_run
from auxgen.export.views import draw_split_views
from auxgen.export.wds import WdsSink
from auxgen.label_stats import LabelStats
from auxgen.run import LoadedRun, load_run_data

# names webdataset's reader skips as metadata (tar_file_iterator's skip_meta default)
_WDS_META = re.compile(r"__[^/]*__($|/)")


@dataclasses.dataclass
class _Job:
    """One export, as every stage sees it (the same in every process but for `dist`)."""

    dist: distributed.Dist
    multi: bool                  # labels gathered from the processes, shards cut by a plan (auxgen.export.ranks)
    run: LoadedRun
    data: Data
    out: Path
    opts: ExportOptions
    info: dict[str, Any]         # fields of the manifest and the HDF5 attributes
    sources: list[SplitSource]
    batches: Batches             # the label source
    show: bool


def export_labels(run_dir: str | Path, out: str | Path, fmt: str | None = None, *,
                  options: ExportOptions | None = None, show: bool = False, **fields: Any) -> dict[str, Any]:
    """Export a run's soft auxiliary labels (see docs/format.md); returns a summary of files, counts and label stats.

    Options come as an `ExportOptions`, or as its fields by name (`fmt` also as the third
    argument); fields given by name override those of `options`. Nothing is written or removed
    until every check has passed; an export never writes over its inputs (the run, its
    checkpoint, the dataset), with or without --force. Under torchrun every process calls this
    and every process returns the summary.
    """
    base = options or ExportOptions()
    opts = dataclasses.replace(base, **({"fmt": fmt} if fmt is not None else {}), **fields).validated()
    out = Path(out)
    multi = ranks.takes_over(out, opts)  # under torchrun, or resuming an export that several processes started
    dist = distributed.init("cuda" if torch.cuda.is_available() and opts.device != "cpu" else "cpu") \
        if multi else distributed.SINGLE
    run, data, info = _open(dist, run_dir, out, opts)
    sources = _split_sources(run, data, opts)
    t0 = time.perf_counter()
    try:
        batches = (baseline_batches(run, data, opts.splits, opts.batch_size) if run.generator is None else
                   local_batches(run.generator, data, run.device, opts.batch_size, int(run.meta["data"]["pad"])))
        if multi:
            batches = ranks.gather(dist, batches, sources, opts.views, run.hier.num_aux, opts.batch_size)
        job = _Job(dist, multi, run, data, out, opts, info, sources, batches, show and dist.is_main)
        write = {"hdf5": _write_hdf5, "wds": _write_wds, "parquet": _write_parquet}[opts.fmt]
        result, computed = write(job)
    except OSError as e:  # a full disk, a read-only or vanished folder: say which file, in one line
        reason = e.strerror or " ".join(str(e).split())[:200]
        hint = ("; the finished shards are kept: run again with --resume to continue"
                if opts.fmt == "wds" and (out / STATE_NAME).is_file() else "")
        raise AuxgenError(f"cannot write {e.filename or out}: {reason}{hint}") from None
    seconds = time.perf_counter() - t0
    computed = sum(dist.all_gather(computed))  # samples this call wrote, over all processes
    result.update(seconds=seconds, samples_per_s=computed / seconds if seconds > 0 else None,
                  samples_computed=computed, **({"processes": dist.world} if multi else {}))
    return result


def _open(dist: distributed.Dist, run_dir: str | Path, out: Path,
          opts: ExportOptions) -> tuple[LoadedRun, Data, dict[str, Any]]:
    """The run and its data, loaded and checked before anything is written (rank 0 first: its errors stop every
    process once); returns them with the manifest's fields, rank 0's (one `created` for every process)."""
    dist.on_main(lambda: _check_out(out, opts))
    run = dist.main_first(lambda: _load(run_dir, opts))
    device_name = str(run.device)  # what a one-process export records (not this process's cuda:LOCAL_RANK)
    if run.device.type == "cuda" and dist.enabled:
        run.device = dist.device(run.device)
        run.generator.to(run.device)  # type: ignore[union-attr]
    data = dist.main_first(lambda: load_run_data(run, check=True))

    def check() -> dict[str, Any]:
        if data.num_classes != run.hier.num_primary:
            raise AuxgenError(f"the data has {data.num_classes} classes but the run's psi covers "
                              f"{run.hier.num_primary}")
        _check_not_inputs(out, opts, run, data)
        if opts.force:
            _check_replaceable(out, opts)
        _check_keys(data, opts)
        _check_views_fit(data, opts)
        return {**_info(run, data, opts), "device": device_name}

    return run, data, dist.broadcast(dist.on_main(check))  # type: ignore[return-value]


# ------------------------------------------------------------------------------ checks (nothing written)
def _check_out(out: Path, opts: ExportOptions) -> None:
    """--out against what is there now: the right kind of path, and replaced only when asked."""
    try:
        above = next((p for p in out.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise AuxgenError(f"--out {out}: {above} is a file, not a folder")
        if opts.fmt == "hdf5":
            if out.is_dir():
                raise AuxgenError(f"--out {out} is a folder; give a file name such as {out / 'labels.h5'}")
            existing = [p for p in hdf5_paths(out) if os.path.lexists(p)]
            if existing and not opts.force:
                raise AuxgenError(f"{existing[0]} exists; pass --force to replace the export, or choose another --out")
            return
        _check_folder(out, opts)
    except OSError as e:  # e.g. a folder that cannot be listed
        raise AuxgenError(f"--out {out}: {e.strerror or e}") from None


def _check_folder(out: Path, opts: ExportOptions) -> None:
    """A shard or parquet folder: new, empty, an export to replace (--force) or an unfinished one to continue
    (--resume, shards)."""
    if out.exists() and not out.is_dir():
        what = "parquet tables" if opts.fmt == "parquet" else "shards"
        raise AuxgenError(f"--out {out} is a file; {what} go into a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    state_file, manifest = out / STATE_NAME, out / MANIFEST_NAME
    if opts.resume:
        if not state_file.is_file():
            what = "is a finished export (it has a manifest)" if manifest.is_file() else "holds no unfinished export"
            raise AuxgenError(f"--resume: {out} {what}; nothing to resume")
        return
    if not names:
        return
    foreign = [n for n in names if not is_ours(n)]
    if foreign:
        raise AuxgenError(f"--out {out} holds files auxgen did not write ({', '.join(foreign[:3])}); "
                          f"choose an empty or new folder")
    if not opts.force:
        if state_file.is_file():
            raise AuxgenError(f"{out} holds an unfinished export; pass --resume to continue it "
                              f"or --force to start over")
        raise AuxgenError(f"{out} already holds an export; pass --force to replace it, or choose another --out")


def _check_replaceable(out: Path, opts: ExportOptions) -> None:
    """--force replaces an earlier auxgen export, never a file of someone else's (checked after the inputs: an
    --out that is an input is refused as that)."""
    try:
        if opts.fmt == "hdf5":
            for p in (p for p in hdf5_paths(out) if os.path.lexists(p)):
                problem = not_ours(p, opts.fmt)
                if problem:
                    raise AuxgenError(f"--out {out}: {p} exists and {problem}; --force replaces only an earlier "
                                      f"auxgen export: choose another --out")
            return
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() and not opts.resume else []
        problem = _not_an_export(out, names, opts.fmt) if names else None
    except OSError as e:
        raise AuxgenError(f"--out {out}: {e.strerror or e}") from None
    if problem:
        raise AuxgenError(f"--out {out}: {problem}; --force replaces only an earlier auxgen export: choose an "
                          f"empty or new folder")


def _not_an_export(out: Path, names: list[str], kind: str) -> str | None:
    """Why a folder of names an export uses cannot be shown to hold an earlier auxgen export (None if it can): every
    entry a regular file, and an auxgen manifest, a resume state, or nothing but files being written."""
    for n in names:
        if not stat.S_ISREG(os.lstat(out / n).st_mode):
            problem = not_ours(out / n, kind)  # a parquet split folder holding only its table passes
            if problem:
                return f"{n} {problem}"
    for n in names:  # what says it is auxgen's must say so truly
        if n in (MANIFEST_NAME, PARQUET_MANIFEST_NAME) or n.lstrip("_").startswith("generator."):
            problem = not_ours(out / n, kind)
            if problem:
                return f"{n} {problem}"
    if ({MANIFEST_NAME, PARQUET_MANIFEST_NAME} & set(names) or is_resume_state(out / STATE_NAME)
            or all(is_temp(n) for n in names)):
        return None
    return f"it holds {', '.join(names[:3])} but no auxgen manifest or resume state shows them to be an export"


def _load(run_dir: str | Path, opts: ExportOptions) -> LoadedRun:
    run = open_run(run_dir, opts.checkpoint, opts.device, opts.data_root)
    fingerprint = run.state.get("data_fingerprint")
    if fingerprint not in (None, run.meta["data"].get("fingerprint")):
        raise AuxgenError(f"checkpoint {opts.checkpoint} was trained on different data ({run.state.get('dataset')}) "
                          f"than {run_dir} ({run.meta['data'].get('name')}); use a checkpoint of this run")
    check_exportable(run, opts.splits, opts.generator_formats)  # a baseline run: its fixed labels, no generator
    return run


def _inputs(run: LoadedRun, data: Data) -> list[tuple[str, Path]]:
    """Everything an export's run reads: the run directory, the checkpoint, every file or folder its config names
    (the dataset, the test tree, --psi-file, --weights FILE, --features-from) and a csv's every image."""
    cfg = run.cfg
    found = [("the run directory", run.run_dir), ("the checkpoint", run.checkpoint_path)]
    if cfg.dataset != "digits":  # digits ships with scikit-learn: nothing of it is on disk
        found.append(("the dataset", Path(cfg.data_root)))
    named = (("the test dataset", cfg.test_root), ("the --psi-file", cfg.psi_file),
             ("the --features-from run", cfg.features_from), ("the --weights file", cfg.weights))
    # --weights also takes a torchvision or timm weights name (DEFAULT, ...): only a file on disk is an input
    found += [(what, Path(p)) for what, p in named if p and (what != "the --weights file" or Path(p).exists())]
    if cfg.dataset == "csv":  # the rows' paths, relative to the csv's folder
        base = Path(cfg.data_root).expanduser().parent
        found += [("an image of the dataset", base / k) for sp in (data.train, data.test) for k in sp.keys]
    return [(what, p.expanduser().resolve()) for what, p in found]


def _inside(path: str, folder: str) -> bool:
    """`path` lies below `folder` (both resolved; string tests: a csv may list a great many images)."""
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_not_inputs(out: Path, opts: ExportOptions, run: LoadedRun, data: Data) -> None:
    """Refuse any output path that is, holds or lies inside an input (symbolic links followed)."""
    outputs = hdf5_paths(out) if opts.fmt == "hdf5" else (out,)
    inputs = [(what, str(src)) for what, src in _inputs(run, data)]
    for o in outputs:
        target = str(o.expanduser().resolve())
        for what, src in inputs:
            how = ("is" if target == src else "lies inside" if _inside(target, src)
                   else "holds" if _inside(src, target) else None)
            if how:
                name = f"--out {out}" if o == out else f"--out {out}: its {o.name}"
                raise AuxgenError(f"{name} {how} {what} ({src}); an export never writes over its own inputs, "
                                  f"choose another --out")


def _check_keys(data: Data, opts: ExportOptions) -> None:
    """Every sample must get its own key, and (shards) a __key__ that webdataset reads back as it is."""
    for s in opts.splits:
        keys = getattr(data, s).keys
        stored = [wds_key(k) for k in keys] if opts.fmt == "wds" else keys
        first: dict[str, str] = {}
        for key, sk in zip(keys, stored, strict=True):
            if sk in first:
                raise AuxgenError(f"samples {first[sk]!r} and {key!r} of the {s} split would both be stored under "
                                  f"key {sk!r}; an export needs one key per sample (rename one of them)")
            first[sk] = key
            member = f"{sk}.cls"  # every sample has this member; the others split the same way
            if opts.fmt == "wds" and (base_plus_ext(member) != (sk, "cls") or _WDS_META.match(member)):
                raise AuxgenError(f"sample {key!r} of the {s} split has no WebDataset key that readers give "
                                  f"back unchanged ({sk!r}); export it as --format hdf5 or parquet, or rename it")


# bytes of memory per (sample, view) while the views are drawn and stored: the int64 draws, their concatenation
# and an int32 copy for the file, with room to spare
_VIEW_ROW_BYTES = 64


def _check_views_fit(data: Data, opts: ExportOptions) -> None:
    """The table of every view's crop and flip is held in memory: a --views count it cannot fit in half of this
    machine's memory is refused before anything is allocated (it would end in an out-of-memory kill)."""
    if not opts.views:
        return
    samples = sum(len(getattr(data, s)) for s in opts.splits)
    need = samples * opts.views * _VIEW_ROW_BYTES
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform: nothing to compare with
        return
    if need > have // 2:
        raise AuxgenError(f"--views {opts.views}: the views of {samples} samples need {_gb(need)} of memory for their "
                          f"crop and flip table alone (this machine has {_gb(have)}); use at most "
                          f"{max(1, have // 2 // max(1, samples * _VIEW_ROW_BYTES))} views")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def _info(run: LoadedRun, data: Data, opts: ExportOptions) -> dict[str, Any]:
    """Fields shared by the manifest and the HDF5 attributes."""
    return {"auxgen_version": auxgen.__version__,
            "created": _created(),
            "psi": list(run.hier.psi), "num_primary": run.hier.num_primary, "num_aux": run.hier.num_aux,
            "dtype": opts.dtype, "views": opts.views, "pad": int(run.meta["data"]["pad"]), "seed": opts.seed,
            "batch_size": opts.batch_size, "splits": opts.splits, "checkpoint": opts.checkpoint,
            "checkpoint_sha256": run.checkpoint_sha256, "config_sha256": run.config_sha256,
            "run_dir": str(run.run_dir), "dataset": data.name, "dataset_fingerprint": run.meta["data"]["fingerprint"],
            "test_acc": run.recorded_test_acc(), "device": str(run.device),
            "method": run.cfg.method, "labels": "generator" if run.generator is not None else "one-hot",
            # how a reader decoding the dataset's own files presents them as the labels saw them (docs/format.md)
            "image_shape": list(data.image_shape), "image_fit": "fit" if _fitted(data) else "none"}


def _fitted(data: Data) -> bool:
    entry = DATASETS.get(data.name)
    return bool(entry and entry.fitted)


def _created() -> str:
    """Now, or SOURCE_DATE_EPOCH where set (reproducible builds): two exports of one run can then be byte-identical."""
    return created_timestamp()


# ------------------------------------------------------------------------------ the compute loop
def _split_sources(run: LoadedRun, data: Data, opts: ExportOptions) -> list[SplitSource]:
    """What the sinks get of each exported split (views drawn from the seed, per split)."""
    pad = int(run.meta["data"]["pad"])
    out = []
    for s in opts.splits:
        sp = getattr(data, s)
        views = draw_split_views(len(sp), opts.views, pad, opts.seed) if opts.views else None
        out.append(SplitSource(s, sp.keys, sp.labels.numpy(), sp.images.numpy() if opts.images else None,
                               None if views is None else views.numpy(), data.split_fingerprint(s)))
    return out


def _compute(job: _Job, sink: Sink, pieces: list[tuple[SplitSource, int]]) -> int:
    """Feed the sink each piece, samples `start` to `end` of a split, on a writer thread; returns samples written.

    A piece is a whole split (HDF5), the rest of one (a one-process shard export, resumed or
    not) or one planned shard (several processes); the sink's split begins at the piece.
    """
    writer = BackgroundWriter(maxsize=4)
    done = 0
    with _Progress(sum(end - sp.start for sp, end in pieces), job.show) as progress:
        try:
            for sp, end in pieces:
                writer.call(sink.begin_split, sp)
                for chunk in sample_chunks(job.batches, sp, job.opts.views, sp.start, end):
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


# ------------------------------------------------------------------------------ HDF5
def _write_hdf5(job: _Job) -> tuple[dict[str, Any], int]:
    """Rank 0 writes the one file (the others wait for it); returns the summary and the samples written here."""
    summary, computed = job.dist.broadcast(job.dist.on_main(lambda: _hdf5_file(job)))  # type: ignore[misc]
    return summary, computed if job.dist.is_main else 0


def _file_attrs(job: _Job) -> dict[str, Any]:
    """What an HDF5 file's attributes and a parquet table's metadata record (the manifest's facts, the run config)."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            **{k: v for k, v in job.info.items() if k not in ("splits", "run_dir", "device")},
            "run_config": json.dumps(job.run.meta, sort_keys=True)}


def _hdf5_file(job: _Job) -> tuple[dict[str, Any], int]:
    """The file written to a temporary name, published (renamed into place) by _finish with its generator files:
    an export that fails or is interrupted leaves nothing of itself at --out."""
    out, run, info = job.out, job.run, job.info
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in hdf5_temps(out):  # of an interrupted export to this --out (the file, its manifest, its generator)
        os.unlink(stale)
    attrs = {**_file_attrs(job), "psi": np.asarray(info["psi"], dtype=np.int64),
             "test_acc": float("nan") if info["test_acc"] is None else float(info["test_acc"])}
    tmp = Path(new_hdf5_temp(out))
    try:
        sink = Hdf5Sink(str(tmp), attrs, job.opts.dtype, run.hier.num_aux, job.opts.views, run.hier.psi)
        computed = _compute(job, sink, [(sp, len(sp.keys)) for sp in job.sources])
        entry = {**file_entry(tmp, out.parent), "path": out.name}
        return _finish(job, info, [entry], sink.stats, {}, [(tmp, out)]), computed
    finally:
        tmp.unlink(missing_ok=True)  # published or failed: no temporary file stays


# ------------------------------------------------------------------------------ parquet
def _write_parquet(job: _Job) -> tuple[dict[str, Any], int]:
    """Rank 0 writes the tables (the others wait for them); returns the summary and the samples written here."""
    summary, computed = job.dist.broadcast(job.dist.on_main(lambda: _parquet_files(job)))  # type: ignore[misc]
    return summary, computed if job.dist.is_main else 0


def _parquet_files(job: _Job) -> tuple[dict[str, Any], int]:
    """The tables written to temporary files, then renamed into place by _finish with the generator files."""
    out, run, info = job.out, job.run, job.info
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # of an interrupted export to this folder (_check_folder allowed them)
        stale.unlink()
    sink = ParquetSink(out, {**_file_attrs(job), "kind": "parquet"}, run.hier.num_aux, job.opts.views, run.hier.psi)
    try:
        computed = _compute(job, sink, [(sp, len(sp.keys)) for sp in job.sources])
        files = [{**file_entry(tmp, out), "path": final.relative_to(out).as_posix()} for tmp, final in sink.done]
        return _finish(job, info, files, sink.stats, {}, list(sink.done)), computed
    finally:
        sink.abort()  # the temporary files not renamed (all of them, when the export failed)


# ------------------------------------------------------------------------------ WebDataset
def _write_wds(job: _Job) -> tuple[dict[str, Any], int]:
    """Shards: the folder prepared or resumed, each process's pieces written, rank 0 finishing."""
    dist, run, opts, out = job.dist, job.run, job.opts, job.out
    info = {**job.info, "images": bool(opts.images), "shard_size": opts.shard_size, "max_count": opts.max_count}
    params = state.state_params(info)
    prep: state.Prepared = dist.broadcast(dist.on_main(  # type: ignore[assignment]
        lambda: state.prepare(out, opts, params, info["created"], run.hier.psi, job.multi)))
    info["created"] = prep.created
    if job.multi:  # every process records its shards in its own file; rank 0 merges them at the end
        log = state.ShardLog(out / rank_state_name(dist.rank), {"params": params}, None)
    else:
        log = state.ShardLog(out / STATE_NAME, {"params": params, "created": prep.created}, prep.kept)
    maxcount, maxsize = opts.max_count or 2**62, int(opts.shard_size or 0)
    sink = WdsSink(out, opts.dtype, run.hier.num_aux, opts.views, maxcount, maxsize, run.hier.psi, log.add)
    plan = prep.plan
    if job.multi and plan is None:
        plan = ranks.plan(dist, sink, job.sources, job.batches, opts.views, maxcount, maxsize)
    dist.on_main(lambda: state.save(out, params, prep, plan))  # every process waits for it: a barrier
    if plan is None:  # one process: the rest of each split, its writer cutting the shards as it goes
        pieces = [(dataclasses.replace(sp, start=sum(r["count"] for r in prep.kept[sp.name]),
                                       start_shard=len(prep.kept[sp.name])), len(sp.keys)) for sp in job.sources]
    else:
        pieces = ranks.mine(dist, job.sources, plan, prep.kept)
    computed = _compute(job, sink, pieces)
    new = [r for part in dist.all_gather(log.new) for r in part]
    summary = dist.broadcast(dist.on_main(lambda: _finish_shards(job, info, prep.kept, new)))
    return summary, computed  # type: ignore[return-value]


def _finish_shards(job: _Job, info: dict[str, Any], kept: dict[str, list[state.Record]],
                   new: list[state.Record]) -> dict[str, Any]:
    """Rank 0, once every shard is written: their files and merged statistics checked and finished."""
    psi, splits = job.run.hier.psi, job.opts.splits
    shards = {s: sorted([*kept[s], *(r for r in new if r["split"] == s)], key=lambda r: r["start"]) for s in splits}
    counts = {s: sum(r["count"] for r in shards[s]) for s in splits}
    expected = {s: len(getattr(job.data, s)) for s in splits}
    if counts != expected:  # a bug, not a user error: never write a manifest for an incomplete export
        raise RuntimeError(f"shards hold {counts} samples, expected {expected}")
    stats = LabelStats(psi)
    for r in (r for s in splits for r in shards[s]):
        stats.merge(LabelStats.from_dict(psi, r["stats"]))
    files = [{"path": r["path"], "bytes": r["bytes"], "sha256": r["sha256"]} for s in splits for r in shards[s]]
    resumed = {s: n for s in splits if (n := sum(r["count"] for r in kept[s]))}
    return _finish(job, info, files, stats, resumed)


# ------------------------------------------------------------------------------ finishing (rank 0)
def _finish(job: _Job, info: dict[str, Any], files: list[dict[str, Any]], stats: LabelStats,
            resumed: dict[str, int], staged: list[tuple[Path, Path]] | None = None) -> dict[str, Any]:
    """Once every sample is written: the generator files, then everything published together (`staged`:
    (temporary, final) pairs, renamed into place) and the manifest (last: it marks the export complete), the
    resume state removed; returns the summary."""
    kind, out, opts, run = job.opts.fmt, job.out, job.opts, job.run
    staged = list(staged or [])
    staged_paths = {final.relative_to(export_base(out, kind)).as_posix() for _, final in staged}
    in_place = [f for f in files if f["path"] not in staged_paths]
    for f in in_place:  # documented file mode for every output (shards kept from an earlier process too)
        os.chmod(export_base(out, kind) / f["path"], EXPORT_FILE_MODE)
    gen_files, generators, gen_staged = _write_generators(job, info)
    staged += gen_staged
    files = [*files, *gen_files]
    counts = {s: len(getattr(job.data, s)) for s in opts.splits}
    manifest = manifest_of(out, kind)
    published: list[Path] = []
    try:
        _publish(job, staged, published)
        write_manifest(manifest, kind, {**info, **_generator_info(generators)}, files, counts)
    except BaseException:
        for p in published:  # a failed export leaves nothing of itself (the shards of --format wds stay for --resume)
            p.unlink(missing_ok=True)
        for d in {final.parent for _, final in staged} - {out, out.parent}:  # parquet split folders left empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    if kind == "wds":
        state.finished(out)
    return {"format": kind, "out": str(out), "manifest": str(manifest), "files": files,
            "total_bytes": sum(f["bytes"] for f in files), "counts": counts, "psi": list(run.hier.psi),
            "num_aux": run.hier.num_aux, "views": opts.views, "dtype": opts.dtype,
            "checkpoint": str(run.checkpoint_path), "stats": stats.summary(), "resumed": resumed}


def _publish(job: _Job, staged: list[tuple[Path, Path]], published: list[Path]) -> None:
    """The staged files renamed into place (each appended to `published` once there). A replaced export loses
    its manifest first, so new files never pair with the old manifest; generator files of formats not asked for
    go, and in a parquet folder every other file of the earlier export (tables of splits not written again,
    shards and resume state of a --format wds export)."""
    out, kind = job.out, job.opts.fmt
    manifest_of(out, kind).unlink(missing_ok=True)
    for fmt in GENERATOR_FORMATS:
        if fmt not in job.opts.generator_formats:
            generator_path(out, kind, fmt).unlink(missing_ok=True)
    if kind == "parquet":
        keep = {p.relative_to(out).parts[0] for pair in staged for p in pair}
        for old in out.iterdir():
            if is_ours(old.name) and old.name not in keep:
                remove(old)  # a split folder too
    for tmp, final in staged:
        os.chmod(tmp, EXPORT_FILE_MODE)  # before the rename: a file never appears with mkstemp's 0600
        final.parent.mkdir(exist_ok=True)  # a parquet split folder
        os.replace(tmp, final)
        published.append(final)


def _write_generators(job: _Job, info: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                 list[tuple[Path, Path]]]:
    """Write the generator in each of opts.generator_formats to a temporary file beside its place; returns their
    `files` entries, their `generators` manifest entries and the (temporary, final) pairs for _publish. A failure
    removes the temporary files: the earlier export, if any, is still whole."""
    kind, out, data = job.opts.fmt, job.out, job.data
    base = export_base(out, kind)
    sp = getattr(data, job.opts.splits[0])
    n = min(64, len(sp))  # the reload check: enough rows to catch a wrong file, few enough to be instant
    example = (sp.images[:n], sp.labels[:n])
    meta = {k: info[k] for k in ("psi", "num_primary", "num_aux", "checkpoint_sha256", "config_sha256", "dataset")}
    meta.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, image_shape=list(data.image_shape),
                input="uint8 images [B, C, H, W], int64 primary labels [B]", output="float32 soft labels [B, K]")
    files, generators, staged = [], [], []
    try:
        for fmt in job.opts.generator_formats:
            path = generator_path(out, kind, fmt)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append((Path(name), path))
            entry = save_generator(job.run.generator, name, fmt,  # type: ignore[arg-type]
                                   {**meta, "generator_format": fmt}, example)
            files.append({**file_entry(Path(name), base), "path": path.relative_to(base).as_posix()})
            generators.append({"path": files[-1]["path"], **entry, "bytes": files[-1]["bytes"],
                               "sha256": files[-1]["sha256"]})
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return files, generators, staged


def _generator_info(generators: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `generators` list, and `generator`: the TorchScript file's path (what format_version 2
    readers before auxgen 0.2 load), or null."""
    script = next((g["path"] for g in generators if g["format"] == "torchscript"), None)
    return {"generator": script, "generators": generators}
