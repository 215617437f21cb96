"""The one interface both writers (HDF5 and WebDataset shards) implement, and what they are given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from auxgen.export.pipeline import Chunk
from auxgen.label_stats import LabelStats


@dataclass
class SplitSource:
    """One split as a sink sees it: all of its samples, and where this export starts in it."""

    name: str                       # train or test
    keys: list[str]
    primary: np.ndarray             # int64 [N]
    images: np.ndarray | None       # uint8 [N, C, H, W] (None: label-only)
    views: np.ndarray | None        # int64 [N, V, 3] with --views
    fingerprint: str                # sha256 of the split's images, labels and keys
    start: int = 0                  # first sample to write (a resumed export skips the finished ones)
    start_shard: int = 0            # number of the first shard to write (WebDataset)


class Sink(Protocol):
    """Receives an export split by split, on the writer thread, in this order:
    begin_split, write..., end_split (per split), then close; abort instead after any failure."""

    def begin_split(self, split: SplitSource) -> None: ...

    def write(self, chunk: Chunk) -> None: ...

    def end_split(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def add_chunk(stats: LabelStats, c: Chunk, lo: int = 0, hi: int | None = None) -> None:
    """Add samples lo..hi of a chunk to label statistics (with views, every view is a row)."""
    soft = c.soft[lo:hi]
    reps = soft.shape[1] if soft.ndim == 3 else 1
    stats.add(torch.from_numpy(soft.reshape(-1, soft.shape[-1])),
              torch.from_numpy(np.repeat(c.primary[lo:hi], reps)))
