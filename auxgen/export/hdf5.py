"""HDF5 sink: one file, one group per split, chunked along N and deflate-compressed.

Deflate (gzip) and shuffle are built into every HDF5 library, so any language reads the file;
chunks of about 256 KiB keep a full scan fast and random access cheap (one small chunk per row).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from auxgen.export.pipeline import Chunk
from auxgen.export.sink import SplitSource, add_chunk
from auxgen.label_stats import LabelStats
from auxgen.paths import one_line

CHUNK_BYTES = 1 << 18
GZIP_LEVEL = 4


def _chunks(n: int, row_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    return (max(1, min(n, CHUNK_BYTES // row_bytes)), *row_shape)


@contextlib.contextmanager
def _write_errors(path: str) -> Iterator[None]:
    """HDF5 reports a failed write (a full disk, above all) as a RuntimeError naming its own internals; the
    exporter turns OSErrors into one line naming the file, so failed writes become OSErrors."""
    try:
        yield
    except RuntimeError as e:
        full = "errno = 28" in str(e)  # HDF5 quotes the C library's errno of the failed write
        with contextlib.suppress(OSError):
            full = full or shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < (16 << 20)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from None
        raise OSError(errno.EIO, f"HDF5 write failed ({one_line(e, 120, whole=True)})", path) from None


class Hdf5Sink:
    """Writes an export into an HDF5 file (the caller gives a temporary path and renames it).

    `stats` accumulates the label statistics of everything written.
    """

    def __init__(self, path: str, attrs: dict[str, Any], dtype: str, num_aux: int, views: int,
                 psi: tuple[int, ...]) -> None:
        # a large chunk cache holds partly written chunks until complete, so nothing is compressed twice
        self.path = path
        self.f = h5py.File(path, "w", rdcc_nbytes=64 << 20, rdcc_nslots=10007)
        for k, v in attrs.items():
            self.f.attrs[k] = v
        self.dtype, self.k, self.v = np.dtype(dtype), num_aux, views
        self.stats = LabelStats(psi)
        self.g: h5py.Group | None = None

    def _dataset(self, name: str, data: np.ndarray | None, shape: tuple[int, ...], dtype: Any) -> None:
        assert self.g is not None
        dt = np.dtype(dtype)
        itemsize = 16 if dt.kind == "O" else dt.itemsize  # variable-length strings: a heap reference per row
        numeric = dt.kind in "iuf"
        self.g.create_dataset(name, shape=shape, dtype=dtype, data=data,
                              chunks=_chunks(max(shape[0], 1), shape[1:], itemsize),
                              compression="gzip", compression_opts=GZIP_LEVEL, shuffle=numeric)

    def begin_split(self, split: SplitSource) -> None:
        with _write_errors(self.path):
            self._begin_split(split)

    def _begin_split(self, split: SplitSource) -> None:
        n = len(split.keys)
        self.g = self.f.create_group(split.name)
        self.g.attrs["count"] = n
        self.g.attrs["split_fingerprint"] = split.fingerprint
        vshape = (self.v,) if self.v else ()
        self._dataset("keys", np.array(split.keys, dtype=object), (n,), h5py.string_dtype("utf-8"))
        self._dataset("index", np.arange(n, dtype=np.int64), (n,), np.int64)
        self._dataset("primary", split.primary.astype(np.int64), (n,), np.int64)
        self._dataset("aux_soft", None, (n, *vshape, self.k), self.dtype)
        self._dataset("aux_hard", None, (n, *vshape), np.int64)
        self._dataset("entropy", None, (n, *vshape), np.float32)
        if split.views is not None:
            self._dataset("views", split.views.astype(np.int32), (n, self.v, 3), np.int32)

    def write(self, chunk: Chunk) -> None:
        assert self.g is not None
        a, b = chunk.start, chunk.start + len(chunk)
        with _write_errors(self.path):
            self.g["aux_soft"][a:b] = chunk.soft.astype(self.dtype, copy=False)
            self.g["aux_hard"][a:b] = chunk.hard
            self.g["entropy"][a:b] = chunk.entropy
        add_chunk(self.stats, chunk)

    def end_split(self) -> None:
        self.g = None

    def close(self) -> None:
        with _write_errors(self.path):
            self.f.close()

    def abort(self) -> None:
        try:
            self.f.close()
        except Exception:  # already closed or broken: the temporary file is removed anyway
            pass
