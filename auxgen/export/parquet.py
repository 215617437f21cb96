"""Parquet sink: one table per split in the export's folder, laid out hive-style (`split=train/part-0.parquet`,
`split=test/part-0.parquet`) so that pyarrow, pandas, Spark and DuckDB read the folder as one table with a
`split` column (the manifest and generator files carry names starting with `_`, which those readers skip).

Columns `key`, `index`, `primary`, `aux_soft` (a fixed-size list of K float32), `aux_hard`,
`entropy` and, with --views, `views`; with --views the label columns are fixed-size lists of V
(aux_soft of V lists of K). The export's facts (the HDF5 attributes) sit in the file's key-value
metadata under `auxgen`, as JSON. zstd-compressed row groups of up to ROW_GROUP_ROWS rows, so
pandas, polars, DuckDB, Spark and Hugging Face `datasets` read the tables directly.

Each table is written to `.{split}.parquet.tmp` in the folder and renamed into its split folder by the exporter
once every split is complete (`done`); `abort` removes the temporary files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from auxgen.errors import AuxgenError
from auxgen.export.format import OLD_PARQUET_PATTERN, PARQUET_METADATA_KEY, parquet_name
from auxgen.export.layout import temp_path
from auxgen.export.pipeline import Chunk
from auxgen.export.sink import SplitSource, add_chunk
from auxgen.label_stats import LabelStats

ROW_GROUP_ROWS = 1 << 16          # rows per row group: large enough to scan fast, small enough to skip into
ROW_GROUP_BYTES = 64 << 20        # ... and at most about this much label data per row group
COMPRESSION = "zstd"


def require_pyarrow(what: str = "--format parquet") -> None:
    """An AuxgenError in one line where pyarrow is not installed."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise AuxgenError(f"{what} needs pyarrow: pip install 'auxgen[parquet]' (or pip install pyarrow)") from None


def schema(num_aux: int, views: int, metadata: dict[str, Any] | None = None) -> Any:
    """The Arrow schema of a split's table (docs/format.md)."""
    import pyarrow as pa

    soft: Any = pa.list_(pa.float32(), num_aux)
    hard: Any = pa.int64()
    ent: Any = pa.float32()
    fields = [pa.field("key", pa.string(), nullable=False), pa.field("index", pa.int64(), nullable=False),
              pa.field("primary", pa.int64(), nullable=False)]
    if views:
        soft, hard, ent = pa.list_(soft, views), pa.list_(hard, views), pa.list_(ent, views)
    fields += [pa.field("aux_soft", soft, nullable=False), pa.field("aux_hard", hard, nullable=False),
               pa.field("entropy", ent, nullable=False)]
    if views:
        fields.append(pa.field("views", pa.list_(pa.list_(pa.int32(), 3), views), nullable=False))
    meta = None if metadata is None else {PARQUET_METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    return pa.schema(fields, metadata=meta)


def _fixed(values: np.ndarray) -> Any:
    """A numpy array [N, d1, ..., dk] as an Arrow array of N nested fixed-size lists."""
    import pyarrow as pa

    arr: Any = pa.array(np.ascontiguousarray(values).reshape(-1))
    for d in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(d))
    return arr


class ParquetSink:
    """Writes each split's table to a temporary file in `folder`; `done` lists (temporary, final) paths.

    `stats` accumulates the label statistics of everything written.
    """

    def __init__(self, folder: Path, info: dict[str, Any], num_aux: int, views: int, psi: tuple[int, ...]) -> None:
        self.folder, self.info, self.k, self.v = folder, info, num_aux, views
        self.stats = LabelStats(psi)
        self.done: list[tuple[Path, Path]] = []
        self._open: list[Path] = []
        self._writer: Any = None
        self._split: SplitSource | None = None
        self._pending: list[Chunk] = []
        self._rows = 0

    def begin_split(self, split: SplitSource) -> None:
        import pyarrow.parquet as pq

        tmp = temp_path(self.folder, OLD_PARQUET_PATTERN.format(split=split.name))  # one per split, at the top
        self._open.append(tmp)
        meta = {**self.info, "split": split.name, "count": len(split.keys), "split_fingerprint": split.fingerprint}
        self._split, self._pending, self._rows = split, [], 0
        self._writer = pq.ParquetWriter(tmp, schema(self.k, self.v, meta), compression=COMPRESSION)

    def write(self, chunk: Chunk) -> None:
        self._pending.append(chunk)
        add_chunk(self.stats, chunk)
        rows = sum(len(c) for c in self._pending)
        if rows >= ROW_GROUP_ROWS or sum(c.soft.nbytes for c in self._pending) >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        sp, chunks = self._split, self._pending
        assert sp is not None
        a, b = chunks[0].start, chunks[-1].start + len(chunks[-1])
        if b - a != sum(len(c) for c in chunks):  # a bug, not a user error: rows must arrive in order
            raise RuntimeError(f"parquet rows {a}..{b} of {sp.name} arrived out of order")
        cols: dict[str, Any] = {
            "key": pa.array(sp.keys[a:b], pa.string()),
            "index": pa.array(np.arange(a, b, dtype=np.int64)),
            "primary": pa.array(np.concatenate([c.primary for c in chunks]).astype(np.int64)),
            "aux_soft": _fixed(np.concatenate([c.soft for c in chunks]).astype(np.float32, copy=False)),
            "aux_hard": _fixed(np.concatenate([c.hard for c in chunks]).astype(np.int64, copy=False)),
            "entropy": _fixed(np.concatenate([c.entropy for c in chunks]).astype(np.float32, copy=False)),
        }
        if self.v:
            assert sp.views is not None
            cols["views"] = _fixed(sp.views[a:b].astype(np.int32))
        self._writer.write_table(pa.table(cols, schema=self._writer.schema))
        self._rows += b - a
        self._pending = []

    def end_split(self) -> None:
        self._flush()
        sp = self._split
        assert sp is not None
        if self._rows != len(sp.keys) - sp.start:
            raise RuntimeError(f"parquet table {sp.name} got {self._rows} rows, expected {len(sp.keys)}")
        self._writer.close()
        self._writer = None
        self.done.append((self._open[-1], self.folder / parquet_name(sp.name)))
        self._split = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # already broken: the temporary files are removed anyway
            pass
        self._writer = None
        for tmp in self._open:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
