"""Exports by several processes (`torchrun --nproc-per-node N -m auxgen export ...`), byte-identical to one.

Each process labels a contiguous, batch-aligned share of every split's rows, in the fixed
batching of `auxgen.export.labels` (so every label is bit-for-bit what one process computes),
and the shares are gathered over the process group. Then:

- WebDataset: every process encodes a share of the samples to learn their tar sizes, the sizes
  are gathered, and every process cuts the same shards with the writer's own packing rule
  (`plan_shards`): the boundaries and keys are those of a one-process export. Shard i of a split
  is written by process i % N. Each process records its finished shards in its own resume file
  (`.auxgen-export.rank-R.json`); rank 0 writes the generator files and the one manifest after
  all have finished. `--resume` (with any number of processes, one included) keeps every
  finished shard whose size and sha256 check out and writes the others.
- HDF5: rank 0 writes the one file from the gathered labels, feeding its writer the same
  batches a one-process export computes.

Every process holds all labels of the exported splits (N x K floats), not the images' encodings.
Multi-node runs need --out on a file system every node sees (WebDataset shards are written by
every process).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxgen import distributed
from auxgen.checkpoint import sha256_file, write_json_atomic
from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export import exporter as ex
from auxgen.export.format import FORMAT_VERSION, MANIFEST_NAME, STATE_NAME, shard_name
from auxgen.export.labels import hard_and_entropy, iter_label_batches
from auxgen.export.manifest import write_manifest
from auxgen.export.options import ExportOptions
from auxgen.export.pipeline import Chunk
from auxgen.export.sink import SplitSource
from auxgen.export.wds import WdsSink, plan_shards, tar_bytes
from auxgen.label_stats import LabelStats
from auxgen.run import LoadedRun, load_run_data

Labels = tuple[np.ndarray, np.ndarray, np.ndarray]  # soft [R, K], hard [R], entropy [R] of consecutive rows


def rank_state_name(rank: int) -> str:
    return f".auxgen-export.rank-{rank}.json"


def takes_over(out: Path, opts: ExportOptions) -> bool:
    """Whether this export is a multi-process one: under torchrun, or resuming one that several processes began."""
    if distributed.current().enabled:
        return True
    if not (opts.fmt == "wds" and opts.resume and (out / STATE_NAME).is_file()):
        return False
    try:
        return "plan" in json.loads((out / STATE_NAME).read_text())
    except (ValueError, OSError):
        return False  # the one-process path reports the damage


def export_ranks(run_dir: str | Path, out: Path, opts: ExportOptions, show: bool) -> dict[str, Any]:
    """`export_labels` by every process of the group (or one, resuming); every process returns the summary."""
    dist = distributed.init("cuda" if torch.cuda.is_available() and opts.device not in ("cpu",) else "cpu")
    show = show and dist.is_main
    run = dist.main_first(lambda: ex._load(run_dir, opts))  # rank 0 first: its errors stop every process once
    device_name = str(run.device)  # what a one-process export records (not this process's cuda:LOCAL_RANK)
    if run.device.type == "cuda":
        run.device = dist.device(run.device)
        run.generator.to(run.device)  # type: ignore[union-attr]
    data = dist.main_first(lambda: load_run_data(run, check=True))

    def check() -> dict[str, Any]:  # export_labels' checks, made once; nothing is written before they pass
        try:
            ex._check_out(out, opts)
        except OSError as e:
            raise AuxgenError(f"--out {out}: {e.strerror or e}") from None
        if data.num_classes != run.hier.num_primary:
            raise AuxgenError(f"the data has {data.num_classes} classes but the run's psi covers "
                              f"{run.hier.num_primary}")
        ex._check_not_inputs(out, opts, run)
        ex._check_keys(data, opts)
        return {**ex._info(run, data, opts), "device": device_name}

    info = dist.broadcast(dist.on_main(check))  # one `created` for every process
    t0 = time.perf_counter()
    labels = {s: _gather_labels(dist, run, data, s, opts) for s in opts.splits}
    try:
        result = (_hdf5(dist, run, data, out, info, opts, show, labels) if opts.fmt == "hdf5"
                  else _wds(dist, run, data, out, info, opts, labels))
    except OSError as e:
        raise AuxgenError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    seconds = time.perf_counter() - t0
    computed = sum(dist.all_gather(result.pop("computed")))
    result.update(seconds=seconds, samples_per_s=computed / seconds if seconds > 0 else None,
                  samples_computed=computed, processes=dist.world)
    return result


def _gather_labels(dist: distributed.Dist, run: LoadedRun, data: Data, split: str, opts: ExportOptions) -> Labels:
    """All rows' labels of a split: this process computes its batch-aligned share, the others theirs."""
    sp = getattr(data, split)
    v = max(opts.views, 1)
    n_rows, bs = len(sp) * v, opts.batch_size
    n_batches = -(-n_rows // bs)
    lo, hi = (min(n_rows, bs * (n_batches * r // dist.world)) for r in (dist.rank, dist.rank + 1))
    views = None
    if opts.views:
        views = ex.draw_split_views(len(sp), opts.views, int(run.meta["data"]["pad"]), opts.seed)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if hi > lo:
        for r0, soft in iter_label_batches(run.generator, sp.images, sp.labels, run.device, bs, views,
                                           int(run.meta["data"]["pad"]), lo):
            if r0 >= hi:
                break
            hard, ent = hard_and_entropy(soft)
            parts.append((soft.cpu().numpy(), hard.cpu().numpy(), ent.cpu().numpy()))
    k = run.hier.num_aux
    mine = (np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32))
    every = dist.all_gather(mine)
    return tuple(np.concatenate([e[i] for e in every]) for i in range(3))  # type: ignore[return-value]


def _chunk(split: SplitSource, labels: Labels, views: int, a: int, b: int) -> Chunk:
    """Samples a..b of a split as the writers take them (with views, V consecutive rows per sample)."""
    v = max(views, 1)
    soft, hard, ent = (x[a * v:b * v] for x in labels)
    shape = (b - a, v) if views else (b - a,)
    return Chunk(split.name, a, split.primary[a:b], soft.reshape(*shape, soft.shape[-1]), hard.reshape(shape),
                 ent.reshape(shape))


# ------------------------------------------------------------------------------ HDF5
def _hdf5(dist: distributed.Dist, run: LoadedRun, data: Data, out: Path, info: dict[str, Any], opts: ExportOptions,
          show: bool, labels: dict[str, Labels]) -> dict[str, Any]:
    def batches(split: str, start_row: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        soft, hard, ent = labels[split]
        for r0 in range(start_row, len(soft), opts.batch_size):  # the batches one process computes
            r1 = r0 + opts.batch_size
            yield r0, torch.from_numpy(soft[r0:r1]), torch.from_numpy(hard[r0:r1]), torch.from_numpy(ent[r0:r1])

    def write() -> dict[str, Any]:
        result = ex._export_hdf5(run, data, out, info, opts, show, batches)
        result["computed"] = 0
        return result

    result = dist.broadcast(dist.on_main(write))  # the other processes wait for rank 0's file and manifest
    n = sum(len(getattr(data, s)) for s in opts.splits)
    return {**result, "computed": len(range(dist.rank, n, dist.world))}  # samples, shared out for the count


# ------------------------------------------------------------------------------ WebDataset
def _wds(dist: distributed.Dist, run: LoadedRun, data: Data, out: Path, info: dict[str, Any], opts: ExportOptions,
         labels: dict[str, Labels]) -> dict[str, Any]:
    info = {**info, "images": bool(opts.images), "shard_size": opts.shard_size, "max_count": opts.max_count}
    params = {k: info[k] for k in ex._STATE_PARAMS}
    params["format_version"] = FORMAT_VERSION
    sources = ex._split_sources(run, data, opts)
    maxcount, maxsize = opts.max_count or 2**62, int(opts.shard_size or 0)
    records: list[dict[str, Any]] = []
    state_path, my_state = out / STATE_NAME, out / rank_state_name(dist.rank)

    def on_record(record: dict[str, Any]) -> None:
        records.append(record)
        write_json_atomic(my_state, {"params": params, "shards": records})

    sink = WdsSink(out, opts.dtype, run.hier.num_aux, opts.views, maxcount, maxsize, run.hier.psi, on_record)
    prep = dist.broadcast(dist.on_main(lambda: _prepare(out, opts, params, info["created"], run.hier.psi)))
    info["created"], kept, plan = prep["created"], prep["kept"], prep["plan"]
    if plan is None:  # the shard boundaries one process would cut, from every sample's tar size
        plan = {}
        for sp in sources:
            n = len(sp.keys)
            a, b = n * dist.rank // dist.world, n * (dist.rank + 1) // dist.world
            sizes = [tar_bytes(key, files) for key, files in sink.samples(sp, _chunk(sp, labels[sp.name], opts.views,
                                                                                     a, b))]
            needs = [x for part in dist.all_gather(sizes) for x in part]
            plan[sp.name] = plan_shards(needs, maxcount, maxsize)
        if dist.is_main:
            write_json_atomic(state_path, {"params": params, "created": info["created"], "plan": plan,
                                           "shards": {s: [] for s in opts.splits}})
        dist.barrier()
    written = 0
    for sp in sources:
        for i, (a, count) in enumerate(plan[sp.name]):
            if i % dist.world != dist.rank or shard_name(sp.name, i) in kept:
                continue
            sink.begin_split(SplitSource(sp.name, sp.keys, sp.primary, sp.images, sp.views, sp.fingerprint, a, i))
            try:
                sink.write(_chunk(sp, labels[sp.name], opts.views, a, a + count))
                sink.end_split()
            except BaseException:
                sink.abort()
                raise
            written += count
    every = [r for part in dist.all_gather(records) for r in part]
    result = dist.broadcast(dist.on_main(lambda: _finish(run, data, out, info, opts, plan, kept, every)))
    return {**result, "computed": written}


def _prepare(out: Path, opts: ExportOptions, params: dict[str, Any], created: str,
             psi: tuple[int, ...]) -> dict[str, Any]:
    """Rank 0: the folder made ready; with --resume, the plan and the finished shards that check out."""
    if not opts.resume:
        if out.is_dir():
            ex._clear(out)
        out.mkdir(parents=True, exist_ok=True)
        return {"created": created, "kept": {}, "plan": None}
    state = ex._read_state(out / STATE_NAME)
    changed = sorted(k for k in set(params) | set(state["params"]) if params.get(k) != state["params"].get(k))
    if changed:
        raise AuxgenError(f"--resume: the export in {out} was started with different {', '.join(changed)}; "
                          f"repeat its options or start over with --force")
    plan = state.get("plan")
    if plan is None:
        raise AuxgenError(f"--resume: the export in {out} was started by one process; resume it with one process "
                          f"(without torchrun)")
    plan = {s: [tuple(x) for x in v] for s, v in plan.items()}
    found = [r for rs in state["shards"].values() for r in rs]
    for p in sorted(out.glob(".auxgen-export.rank-*.json")):
        try:
            found += [r for r in json.loads(p.read_text()).get("shards", []) if isinstance(r, dict)]
        except (ValueError, OSError):
            continue  # a process killed while writing its record: its shard is simply written again
    kept: dict[str, dict[str, Any]] = {}
    for r in found:
        try:
            i = int(r["path"].split("-")[1].split(".")[0])
            ok = (tuple(plan[r["split"]][i]) == (r["start"], r["count"]) and (out / r["path"]).is_file()
                  and (out / r["path"]).stat().st_size == r["bytes"] and sha256_file(out / r["path"]) == r["sha256"])
            LabelStats.from_dict(psi, r["stats"])
        except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError):
            ok = False
        if ok:
            kept[r["path"]] = r
    for p in out.iterdir():  # unfinished or unverifiable shards and old per-process records go
        if (p.name.endswith((".tar", ".tmp")) and p.name not in kept) or p.name.startswith(".auxgen-export.rank-"):
            p.unlink()
    by_split = {s: sorted((r for r in kept.values() if r["split"] == s), key=lambda r: r["start"])
                for s in opts.splits}
    write_json_atomic(out / STATE_NAME, {"params": params, "created": state.get("created", created),
                                         "plan": plan, "shards": by_split})
    return {"created": state.get("created", created), "kept": kept, "plan": plan}


def _finish(run: LoadedRun, data: Data, out: Path, info: dict[str, Any], opts: ExportOptions,
            plan: dict[str, list[tuple[int, int]]], kept: dict[str, dict[str, Any]],
            new: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0, after every process finished its shards: generator files, the manifest, the summary."""
    by_name = {**kept, **{r["path"]: r for r in new}}
    shards = {s: [by_name[shard_name(s, i)] for i in range(len(plan[s]))] for s in opts.splits}  # KeyError: a bug
    files, counts, stats, info = ex.finish_shards(run, data, out, info, opts, shards)
    manifest_path = out / MANIFEST_NAME
    ex._publish(*(out / f["path"] for f in files))
    write_manifest(manifest_path, "wds", info, files, counts)
    for p in [out / STATE_NAME, *out.glob(".auxgen-export.rank-*.json")]:
        p.unlink(missing_ok=True)
    resumed = {s: sum(r["count"] for r in kept.values() if r["split"] == s) for s in opts.splits}
    return ex._summary("wds", out, manifest_path, files, counts, stats, run, opts, 0,
                       {s: n for s, n in resumed.items() if n})
