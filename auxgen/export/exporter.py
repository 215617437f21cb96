"""`export_labels`: a run's generator over its data, written as HDF5 or WebDataset shards with a manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from webdataset.tariterators import base_plus_ext

import auxgen
from auxgen.checkpoint import sha256_file, write_json_atomic
from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export.format import (
    EXPORT_FILE_MODE,
    FORMAT_NAME,
    FORMAT_VERSION,
    HDF5_MANIFEST_SUFFIX,
    MANIFEST_NAME,
    STATE_NAME,
    wds_key,
)
from auxgen.export.generator_files import GENERATOR_FORMATS, generator_path, save_generator
from auxgen.export.hdf5 import Hdf5Sink
from auxgen.export.labels import hard_and_entropy, iter_label_batches
from auxgen.export.manifest import created_timestamp, file_entry, write_manifest
from auxgen.export.options import ExportOptions
from auxgen.export.pipeline import BackgroundWriter, SampleAssembler
from auxgen.export.sink import Sink, SplitSource
from auxgen.export.source import open_run
from auxgen.export.views import draw_split_views
from auxgen.export.wds import WdsSink
from auxgen.label_stats import LabelStats
from auxgen.run import LoadedRun, load_run_data

_SHARD = re.compile(r"^(train|test)-\d{6}\.tar$")
_OUR_FILES = re.compile(r"^(manifest\.json|generator\.(pt|pt2|onnx)|\.auxgen-export(\.rank-\d+)?\.json"
                        r"|(train|test)-\d{6}\.tar|\..*\.tmp)$")
# label batches computed elsewhere: (split, start row) -> (first row, soft, hard, entropy), ...
Batches = Callable[[str, int], Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]]
# names webdataset's reader skips as metadata (tar_file_iterator's skip_meta default)
_WDS_META = re.compile(r"__[^/]*__($|/)")


def export_labels(run_dir: str | Path, out: str | Path, fmt: str | None = None, *,
                  options: ExportOptions | None = None, show: bool = False, **fields: Any) -> dict[str, Any]:
    """Export a run's soft auxiliary labels (see docs/format.md); returns a summary of files, counts and label stats.

    Options come as an `ExportOptions`, or as its fields by name (`fmt` also as the third
    argument); fields given by name override those of `options`. Nothing is written or removed
    until every check has passed; an export never writes over its inputs (the run, its
    checkpoint, the dataset), with or without --force.
    """
    base = options or ExportOptions()
    opts = dataclasses.replace(base, **({"fmt": fmt} if fmt is not None else {}), **fields).validated()
    out = Path(out)
    from auxgen.export import ranks

    if ranks.takes_over(out, opts):  # under torchrun, or resuming an export that several processes started
        return ranks.export_ranks(run_dir, out, opts, show)
    try:
        _check_out(out, opts)
    except OSError as e:  # e.g. a folder that cannot be listed
        raise AuxgenError(f"--out {out}: {e.strerror or e}") from None
    run = _load(run_dir, opts)
    data = load_run_data(run, check=True)
    if data.num_classes != run.hier.num_primary:
        raise AuxgenError(f"the data has {data.num_classes} classes but the run's psi covers {run.hier.num_primary}")
    _check_not_inputs(out, opts, run)
    _check_keys(data, opts)
    info = _info(run, data, opts)
    t0 = time.perf_counter()
    try:
        if opts.fmt == "hdf5":
            result = _export_hdf5(run, data, out, info, opts, show)
        else:
            result = _export_wds(run, data, out, info, opts, show)
    except OSError as e:  # a full disk, a read-only or vanished folder: say which file, in one line
        reason = e.strerror or " ".join(str(e).split())[:200]
        hint = ("; the finished shards are kept: run again with --resume to continue"
                if opts.fmt == "wds" and (out / STATE_NAME).is_file() else "")
        raise AuxgenError(f"cannot write {e.filename or out}: {reason}{hint}") from None
    seconds = time.perf_counter() - t0
    computed = result.pop("computed")
    result.update(seconds=seconds, samples_per_s=computed / seconds if seconds > 0 else None,
                  samples_computed=computed)
    return result


# ------------------------------------------------------------------------------ checks (nothing written)
def _check_out(out: Path, opts: ExportOptions) -> None:
    """--out against what is there now: the right kind of path, and replaced only when asked."""
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise AuxgenError(f"--out {out}: {above} is a file, not a folder")
    if opts.fmt == "hdf5":
        if out.is_dir():
            raise AuxgenError(f"--out {out} is a folder; give a file name such as {out / 'labels.h5'}")
        existing = [p for p in _hdf5_paths(out) if p.exists()]
        if existing and not opts.force:
            raise AuxgenError(f"{existing[0]} exists; pass --force to replace the export, or choose another --out")
        return
    if out.exists() and not out.is_dir():
        raise AuxgenError(f"--out {out} is a file; shards go into a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    state, manifest = out / STATE_NAME, out / MANIFEST_NAME
    if opts.resume:
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
    if not opts.force:
        if state.is_file():
            raise AuxgenError(f"{out} holds an unfinished export; pass --resume to continue it "
                              f"or --force to start over")
        raise AuxgenError(f"{out} already holds an export; pass --force to replace it, or choose another --out")


def _hdf5_paths(out: Path) -> tuple[Path, ...]:
    """The HDF5 file, its manifest, and every generator file an export may put beside it."""
    return (out, out.with_name(out.name + HDF5_MANIFEST_SUFFIX),
            *(generator_path(out, "hdf5", f) for f in GENERATOR_FORMATS))


def _load(run_dir: str | Path, opts: ExportOptions) -> LoadedRun:
    run = open_run(run_dir, opts.checkpoint, opts.device, opts.data_root)
    fingerprint = run.state.get("data_fingerprint")
    if fingerprint not in (None, run.meta["data"].get("fingerprint")):
        raise AuxgenError(f"checkpoint {opts.checkpoint} was trained on different data ({run.state.get('dataset')}) "
                          f"than {run_dir} ({run.meta['data'].get('name')}); use a checkpoint of this run")
    if run.generator is None:
        raise AuxgenError(f"{run_dir} was trained with --method {run.cfg.method}, which has no label generator; "
                          f"export needs a maxl run")
    return run


def _inputs(run: LoadedRun) -> list[tuple[str, Path]]:
    """What an export reads: the run directory, the checkpoint, and the dataset's folders on disk."""
    found = [("the run directory", run.run_dir), ("the checkpoint", run.checkpoint_path)]
    if run.cfg.dataset != "digits":  # digits ships with scikit-learn: nothing of it is on disk
        found.append(("the dataset", Path(run.cfg.data_root)))
        if run.cfg.test_root:
            found.append(("the test dataset", Path(run.cfg.test_root)))
    return [(what, p.expanduser().resolve()) for what, p in found]


def _check_not_inputs(out: Path, opts: ExportOptions, run: LoadedRun) -> None:
    """Refuse any output path that is, holds or lies inside an input (symbolic links followed)."""
    outputs = _hdf5_paths(out) if opts.fmt == "hdf5" else (out,)
    for o in outputs:
        target = o.expanduser().resolve()
        for what, src in _inputs(run):
            if target == src or src in target.parents or target in src.parents:
                how = ("is" if target == src else "lies inside" if src in target.parents else "holds")
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
                                  f"back unchanged ({sk!r}); export it as --format hdf5 or rename it")


def _info(run: LoadedRun, data: Data, opts: ExportOptions) -> dict[str, Any]:
    """Fields shared by the manifest and the HDF5 attributes."""
    return {"auxgen_version": auxgen.__version__,
            "created": _created(),
            "psi": list(run.hier.psi), "num_primary": run.hier.num_primary, "num_aux": run.hier.num_aux,
            "dtype": opts.dtype, "views": opts.views, "pad": int(run.meta["data"]["pad"]), "seed": opts.seed,
            "batch_size": opts.batch_size, "splits": opts.splits, "checkpoint": opts.checkpoint,
            "checkpoint_sha256": run.checkpoint_sha256, "config_sha256": run.config_sha256,
            "run_dir": str(run.run_dir), "dataset": data.name, "dataset_fingerprint": run.meta["data"]["fingerprint"],
            "test_acc": run.recorded_test_acc(), "device": str(run.device)}


def _created() -> str:
    """Now, or SOURCE_DATE_EPOCH where set (reproducible builds): two exports of one run can then be byte-identical."""
    return created_timestamp()


def _publish(*paths: Path) -> None:
    """Give finished outputs the documented EXPORT_FILE_MODE (temporary files are created private)."""
    for p in paths:
        if p.is_file():
            os.chmod(p, EXPORT_FILE_MODE)


# ------------------------------------------------------------------------------ the compute loop
def _split_sources(run: LoadedRun, data: Data, opts: ExportOptions, starts: dict[str, int] | None = None,
                   start_shards: dict[str, int] | None = None) -> list[SplitSource]:
    """What the sinks get of each exported split (views drawn from the seed, per split)."""
    pad = int(run.meta["data"]["pad"])
    out = []
    for s in opts.splits:
        sp = getattr(data, s)
        views = draw_split_views(len(sp), opts.views, pad, opts.seed) if opts.views else None
        out.append(SplitSource(s, sp.keys, sp.labels.numpy(), sp.images.numpy() if opts.images else None,
                               None if views is None else views.numpy(), data.split_fingerprint(s),
                               (starts or {}).get(s, 0), (start_shards or {}).get(s, 0)))
    return out


def _compute(run: LoadedRun, data: Data, sink: Sink, opts: ExportOptions, splits: list[SplitSource],
             show: bool, batches: Batches | None = None) -> int:
    """Run the generator over the splits and feed the sink on a writer thread; returns samples computed.

    `batches(split, start_row)` replaces the generator by label batches computed elsewhere (the
    processes of a multi-process export): (first row, soft, hard, entropy) in the same batching.
    """
    v = max(opts.views, 1)
    pad = int(run.meta["data"]["pad"])
    total = sum(len(sp.keys) - sp.start for sp in splits)
    writer = BackgroundWriter(maxsize=4)
    done = 0
    with _Progress(total, show) as progress:
        try:
            for sp in splits:
                writer.call(sink.begin_split, sp)
                if sp.start >= len(sp.keys):
                    writer.call(sink.end_split)
                    continue
                split = getattr(data, sp.name)
                asm = SampleAssembler(sp.name, sp.primary, opts.views, sp.start)
                views = None if sp.views is None else torch.from_numpy(sp.views)
                rows = (batches(sp.name, sp.start * v) if batches is not None else
                        ((r0, soft, *hard_and_entropy(soft)) for r0, soft in iter_label_batches(
                            run.generator, split.images, split.labels, run.device, opts.batch_size, views, pad,
                            sp.start * v)))
                for r0, soft, hard, ent in rows:
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


def _write_generators(run: LoadedRun, data: Data, out: Path, kind: str, info: dict[str, Any],
                      opts: ExportOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the generator in each of opts.generator_formats (and remove files of the other formats, left by an
    earlier export); returns their `files` entries and their `generators` manifest entries."""
    base = out if kind == "wds" else out.parent
    sp = getattr(data, opts.splits[0])
    n = min(64, len(sp))  # the reload check: enough rows to catch a wrong file, few enough to be instant
    example = (sp.images[:n], sp.labels[:n])
    meta = {k: info[k] for k in ("psi", "num_primary", "num_aux", "checkpoint_sha256", "config_sha256", "dataset")}
    meta.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, image_shape=list(data.image_shape),
                input="uint8 images [B, C, H, W], int64 primary labels [B]", output="float32 soft labels [B, K]")
    files, generators = [], []
    for fmt in GENERATOR_FORMATS:
        path = generator_path(out, kind, fmt)
        if fmt not in opts.generator_formats:
            path.unlink(missing_ok=True)
            continue
        entry = save_generator(run.generator, path, fmt, {**meta, "generator_format": fmt}, example)  # type: ignore[arg-type]
        files.append(file_entry(path, base))
        generators.append({"path": files[-1]["path"], **entry, "bytes": files[-1]["bytes"],
                           "sha256": files[-1]["sha256"]})
    return files, generators


def _generator_info(generators: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `generators` list, and `generator`: the TorchScript file's path (what format_version 2
    readers before auxgen 0.2 load), or null."""
    script = next((g["path"] for g in generators if g["format"] == "torchscript"), None)
    return {"generator": script, "generators": generators}


# ------------------------------------------------------------------------------ HDF5
def _export_hdf5(run: LoadedRun, data: Data, out: Path, info: dict[str, Any], opts: ExportOptions,
                 show: bool, batches: Batches | None = None) -> dict[str, Any]:
    manifest_path = _hdf5_paths(out)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    # temporary files of an interrupted export to this --out (the file, its manifest, its generator)
    for stale in glob.glob(os.path.join(glob.escape(str(out.parent)), f".{glob.escape(out.name)}.*.tmp")):
        os.unlink(stale)
    attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
             **{k: v for k, v in info.items() if k not in ("psi", "test_acc", "splits", "run_dir", "device")},
             "psi": np.asarray(info["psi"], dtype=np.int64),
             "test_acc": float("nan") if info["test_acc"] is None else float(info["test_acc"]),
             "run_config": json.dumps(run.meta, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        sink = Hdf5Sink(tmp, attrs, opts.dtype, run.hier.num_aux, opts.views, run.hier.psi)
        computed = _compute(run, data, sink, opts, _split_sources(run, data, opts), show, batches)
        # a replaced export loses its manifest first, so the new file never pairs with the old manifest
        manifest_path.unlink(missing_ok=True)
        os.chmod(tmp, EXPORT_FILE_MODE)  # before the rename: the file never appears with mkstemp's 0600
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    gen_files, generators = _write_generators(run, data, out, "hdf5", info, opts)
    files = [file_entry(out, out.parent), *gen_files]
    counts = {s: len(getattr(data, s)) for s in opts.splits}
    info = {**info, **_generator_info(generators)}
    write_manifest(manifest_path, "hdf5", info, files, counts)
    return _summary("hdf5", out, manifest_path, files, counts, sink.stats, run, opts, computed, {})


# ------------------------------------------------------------------------------ WebDataset
_STATE_PARAMS = ("checkpoint_sha256", "config_sha256", "dataset_fingerprint", "splits", "dtype", "views", "pad",
                 "seed", "batch_size", "device", "images", "shard_size", "max_count")


def _export_wds(run: LoadedRun, data: Data, out: Path, info: dict[str, Any], opts: ExportOptions,
                show: bool) -> dict[str, Any]:
    info = {**info, "images": bool(opts.images), "shard_size": opts.shard_size, "max_count": opts.max_count}
    params = {k: info[k] for k in _STATE_PARAMS}
    params["format_version"] = FORMAT_VERSION
    state_path = out / STATE_NAME
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in opts.splits}
    if opts.resume:
        state = _read_state(state_path)
        changed = sorted(k for k in set(params) | set(state["params"]) if params.get(k) != state["params"].get(k))
        if changed:
            raise AuxgenError(f"--resume: the export in {out} was started with different {', '.join(changed)}; "
                              f"repeat its options or start over with --force")
        info["created"] = state.get("created", info["created"])
        shards = _kept_shards(out, state, opts.splits, run.hier.psi)
    elif out.is_dir():
        _clear(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    starts = {s: sum(r["count"] for r in shards[s]) for s in opts.splits}
    resumed = {s: n for s, n in starts.items() if n}

    def save_state() -> None:
        write_json_atomic(state_path, {"params": params, "created": info["created"], "shards": shards})

    def on_record(record: dict[str, Any]) -> None:
        shards[record["split"]].append(record)
        save_state()

    try:
        save_state()
    except BaseException:
        if created:  # a folder this call made and could not write into goes again
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    sink = WdsSink(out, opts.dtype, run.hier.num_aux, opts.views, opts.max_count or 2**62, int(opts.shard_size or 0),
                   run.hier.psi, on_record)
    sources = _split_sources(run, data, opts, starts, {s: len(shards[s]) for s in opts.splits})
    computed = _compute(run, data, sink, opts, sources, show)
    files, counts, stats, info = finish_shards(run, data, out, info, opts, shards)
    manifest_path = out / MANIFEST_NAME
    _publish(*(out / f["path"] for f in files))  # shards kept from an earlier process, whatever wrote them
    write_manifest(manifest_path, "wds", info, files, counts)
    state_path.unlink()
    return _summary("wds", out, manifest_path, files, counts, stats, run, opts, computed, resumed)


def _clear(out: Path) -> None:
    """Remove an earlier export from a folder (_check_out made sure it holds nothing else)."""
    names = sorted(p.name for p in out.iterdir() if _OUR_FILES.match(p.name))
    # the manifest goes first, so a half-replaced folder never looks complete
    for name in [n for n in names if n == MANIFEST_NAME] + [n for n in names if n != MANIFEST_NAME]:
        (out / name).unlink(missing_ok=True)


def _read_state(path: Path) -> dict[str, Any]:
    """The resume state, checked for the structure the exporter writes; anything else is damage."""
    damaged = AuxgenError(f"{path} is damaged; start the export over with --force")
    try:
        state = json.loads(path.read_text())
    except (ValueError, OSError):
        raise damaged from None
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict) \
            or not isinstance(state.get("shards"), dict):
        raise damaged
    for split, records in state["shards"].items():
        if not isinstance(records, list):
            raise damaged
        for r in records:
            if not (isinstance(r, dict) and isinstance(r.get("path"), str) and _SHARD.match(r["path"])
                    and r["path"].startswith(f"{split}-") and isinstance(r.get("count"), int) and r["count"] > 0
                    and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)
                    and isinstance(r.get("stats"), dict)):
                raise damaged
    return state


def _kept_shards(out: Path, state: dict[str, Any], splits: list[str],
                 psi: tuple[int, ...]) -> dict[str, list[dict[str, Any]]]:
    """Finished shards whose size and sha256 check out, up to the first that does not; the rest are removed."""
    kept: dict[str, list[dict[str, Any]]] = {}
    for s in splits:
        kept[s] = []
        for r in state["shards"].get(s, []):
            p = out / r["path"]
            if not (p.is_file() and p.stat().st_size == r["bytes"] and sha256_file(p) == r["sha256"]):
                break
            try:
                LabelStats.from_dict(psi, r["stats"])
            except (KeyError, TypeError, ValueError, RuntimeError):
                raise AuxgenError(f"{out / STATE_NAME} is damaged; start the export over with --force") from None
            kept[s].append(r)
    keep_names = {r["path"] for rs in kept.values() for r in rs}
    for p in out.iterdir():
        if _OUR_FILES.match(p.name) and p.name.endswith((".tar", ".tmp")) and p.name not in keep_names:
            p.unlink()
    return kept


def _summary(kind: str, out: Path, manifest: Path, files: list[dict[str, Any]], counts: dict[str, int],
             stats: LabelStats, run: LoadedRun, opts: ExportOptions, computed: int,
             resumed: dict[str, int]) -> dict[str, Any]:
    return {"format": kind, "out": str(out), "manifest": str(manifest), "files": files,
            "total_bytes": sum(f["bytes"] for f in files), "counts": counts, "psi": list(run.hier.psi),
            "num_aux": run.hier.num_aux, "views": opts.views, "dtype": opts.dtype,
            "checkpoint": str(run.checkpoint_path), "stats": stats.summary(), "resumed": resumed,
            "computed": computed}


def finish_shards(run: LoadedRun, data: Data, out: Path, info: dict[str, Any], opts: ExportOptions,
                  shards: dict[str, list[dict[str, Any]]]
                  ) -> tuple[list[dict[str, Any]], dict[str, int], LabelStats, dict[str, Any]]:
    """Once every shard is written: write the generator files, check the counts, merge the label statistics.

    Returns the manifest's file list, the sample counts, the statistics, and `info` with the generator entries.
    """
    files = [{"path": r["path"], "bytes": r["bytes"], "sha256": r["sha256"]} for s in opts.splits for r in shards[s]]
    gen_files, generators = _write_generators(run, data, out, "wds", info, opts)
    files += gen_files
    counts = {s: sum(r["count"] for r in shards[s]) for s in opts.splits}
    expected = {s: len(getattr(data, s)) for s in opts.splits}
    if counts != expected:  # a bug, not a user error: never write a manifest for an incomplete export
        raise RuntimeError(f"shards hold {counts} samples, expected {expected}")
    stats = LabelStats(run.hier.psi)
    for s in opts.splits:
        for r in shards[s]:
            stats.merge(LabelStats.from_dict(run.hier.psi, r["stats"]))
    return files, counts, stats, {**info, **_generator_info(generators)}
