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

This module holds only what is particular to several processes: whether an export is one
(`takes_over`), the gathered label source (`gather`), the shard plan (`plan`) and which shards
are this process's (`mine`). Checks, the resume state and finishing are the same for any number
of processes (auxgen.export.exporter, auxgen.export.state).

Every process holds all labels of the exported splits (N x K floats), not the images' encodings.
Multi-node runs need --out on a file system every node sees (WebDataset shards are written by
every process).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from auxgen import distributed
from auxgen.export.format import STATE_NAME
from auxgen.export.labels import Batches, Rows, sample_chunks
from auxgen.export.layout import shard_name
from auxgen.export.options import ExportOptions
from auxgen.export.sink import SplitSource
from auxgen.export.state import Plan, Record
from auxgen.export.wds import WdsSink, plan_shards, tar_bytes

Labels = tuple[np.ndarray, np.ndarray, np.ndarray]  # soft [R, K], hard [R], entropy [R] of consecutive rows


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


def gather(dist: distributed.Dist, local: Batches, sources: list[SplitSource], views: int, k: int,
           batch_size: int) -> Batches:
    """The label source of a multi-process export: each process computes a batch-aligned share of every split's
    rows with `local`, and every process gets all of them, served in the batching one process computes."""
    labels = {sp.name: _gather_split(dist, local, sp, views, k, batch_size) for sp in sources}

    def batches(sp: SplitSource, start_row: int) -> Iterator[Rows]:
        soft, hard, ent = labels[sp.name]
        for r0 in range(start_row // batch_size * batch_size, len(soft), batch_size):
            r1 = r0 + batch_size
            yield r0, soft[r0:r1], hard[r0:r1], ent[r0:r1]

    return batches


def _gather_split(dist: distributed.Dist, local: Batches, sp: SplitSource, views: int, k: int,
                  batch_size: int) -> Labels:
    """All rows' labels of a split: this process computes its share, the others theirs."""
    n_rows = len(sp.keys) * max(views, 1)
    n_batches = -(-n_rows // batch_size)
    lo, hi = (min(n_rows, batch_size * (n_batches * r // dist.world)) for r in (dist.rank, dist.rank + 1))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for r0, soft, hard, ent in local(sp, lo) if hi > lo else ():
        parts.append((soft, hard, ent))
        if r0 + len(soft) >= hi:  # the share ends on a batch boundary: stop before computing the next batch
            break
    mine = (np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32))
    every = dist.all_gather(mine)
    return tuple(np.concatenate([e[i] for e in every]) for i in range(3))  # type: ignore[return-value]


def plan(dist: distributed.Dist, sink: WdsSink, sources: list[SplitSource], batches: Batches, views: int,
         maxcount: int, maxsize: int) -> Plan:
    """The shards one process would cut, from every sample's tar size: each process encodes its share."""
    out: Plan = {}
    for sp in sources:
        n = len(sp.keys)
        a, b = n * dist.rank // dist.world, n * (dist.rank + 1) // dist.world
        sizes = [tar_bytes(key, files) for chunk in sample_chunks(batches, sp, views, a, b)
                 for key, files in sink.samples(sp, chunk)]
        out[sp.name] = plan_shards([x for part in dist.all_gather(sizes) for x in part], maxcount, maxsize)
    return out


def mine(dist: distributed.Dist, sources: list[SplitSource], shards: Plan,
         kept: dict[str, list[Record]]) -> list[tuple[SplitSource, int]]:
    """This process's shards still to write, as (the split from the shard's first sample on, end sample):
    shard i of a split is written by process i % N."""
    done = {r["path"] for rs in kept.values() for r in rs}
    return [(dataclasses.replace(sp, start=a, start_shard=i), a + count) for sp in sources
            for i, (a, count) in enumerate(shards[sp.name])
            if i % dist.world == dist.rank and shard_name(sp.name, i) not in done]
