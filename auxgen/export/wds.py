"""WebDataset sink: per-split tar shards written with webdataset's ShardWriter.

Each shard is written under a temporary name, hashed while it is written, renamed when
complete and then recorded in the resume state, so an interrupted export keeps every
finished shard and `--resume` continues at the first shard that is missing or damaged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from numpy.lib import format as npy_format
from PIL import Image

from auxgen.export.format import SHARD_PATTERN, TAR_TRAILER, wds_key
from auxgen.export.labels import LabelStats
from auxgen.export.pipeline import Chunk


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header numpy writes for a C-ordered array of this shape and dtype (identical for every row)."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                           "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def encode_png(image_chw: np.ndarray) -> bytes:
    """Lossless PNG of a stored uint8 image [C, H, W] (C = 1: greyscale, C = 3: RGB)."""
    arr = image_chw[0] if image_chw.shape[0] == 1 else np.ascontiguousarray(image_chw.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _tar_bytes(sample: dict[str, Any]) -> int:
    """Bytes a sample adds to a tar: a 512-byte header per file plus its data padded to 512."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("_"))


def _shard_written(record: dict[str, Any]) -> None:
    """Called after each shard is finished and recorded (a seam for tests that interrupt an export)."""


class _HashingFile:
    """A write-only file that hashes what passes through it, so no shard is read back to hash it."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by the shard writer's post hook or abort
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class _ShardWriter(wds.ShardWriter):
    """ShardWriter with temporary names, hashing, and a hard size bound that counts tar headers.

    The stock writer counts payload only (a label-only sample is mostly tar headers) and
    closes a shard after it has passed maxsize; this one starts a new shard *before* a
    sample would push it past maxsize, so a shard exceeds it only if one sample alone does.
    """

    def __init__(self, folder: Path, split: str, maxcount: int, maxsize: int, start_shard: int,
                 on_shard: Callable[[str, int, int, str], None]) -> None:
        self.folder, self.on_shard = folder, on_shard
        self._fh: _HashingFile | None = None
        self._tmp: str | None = None
        pattern = os.path.join(str(folder).replace("%", "%%"), SHARD_PATTERN.format(split=split))
        super().__init__(pattern, maxcount=maxcount,
                         maxsize=maxsize, start_shard=start_shard, verbose=0, opener=self._open, post=self._post,
                         encoder=False, mtime=0)
        # mtime 0 makes shards reproducible byte for byte

    def next_stream(self) -> None:
        super().next_stream()
        # GNU headers (long names as GNU longname records): tarfile builds a PAX header by copying
        # each TarInfo, which made header writing the export's main cost. webdataset 1.0.2 drops
        # its own `format` argument, so set it on the tarfile it opened.
        self.tarstream.tarstream.format = tarfile.GNU_FORMAT

    def _open(self, fname: str) -> _HashingFile:
        self._tmp = os.path.join(os.path.dirname(fname), f".{os.path.basename(fname)}.tmp")
        self._fh = _HashingFile(self._tmp)
        return self._fh

    def _post(self, fname: str) -> None:
        assert self._fh is not None and self._tmp is not None
        fh, tmp = self._fh, self._tmp
        fh.flush()
        os.fsync(fh.f.fileno())
        fh.close()
        os.replace(tmp, fname)
        self._fh = self._tmp = None
        self.on_shard(os.path.basename(fname), self.count, fh.n, fh.h.hexdigest())

    def write(self, obj: dict[str, Any]) -> None:
        need = _tar_bytes(obj)
        if self.tarstream is None or self.count >= self.maxcount or (
                self.count > 0 and self.size + need + TAR_TRAILER > self.maxsize):
            self.next_stream()
        self.tarstream.write(obj)
        self.count += 1
        self.total += 1
        self.size += need

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file) without finishing it."""
        if self._fh is not None:
            self._fh.close()
            if self._tmp and os.path.exists(self._tmp):
                os.unlink(self._tmp)
            self._fh = self._tmp = None
        self.tarstream = None


class WdsSink:
    """Writes samples into `folder/{split}-NNNNNN.tar` shards; reports each finished shard to `on_record`."""

    def __init__(self, folder: Path, dtype: str, num_aux: int, views: int, maxcount: int, maxsize: int,
                 psi: tuple[int, ...], on_record: Callable[[dict[str, Any]], None]) -> None:
        self.folder, self.dtype, self.k, self.v = folder, np.dtype(dtype), num_aux, views
        self.maxcount, self.maxsize, self.psi, self.on_record = maxcount, maxsize, psi, on_record
        self.header = npy_header((views, num_aux) if views else (num_aux,), self.dtype)
        self.writer: _ShardWriter | None = None

    def begin_split(self, split: str, keys: list[str], images: np.ndarray | None, views: np.ndarray | None,
                    start: int, start_shard: int) -> None:
        self.split, self.keys, self.images, self.views = split, keys, images, views
        self.start_shard, self.shard_start = start_shard, start
        self.chunks: deque[Chunk] = deque()
        self.writer = None  # opened with the first sample: a finished split gets no empty shard

    def _record(self, name: str, count: int, nbytes: int, sha: str) -> None:
        a, b = self.shard_start, self.shard_start + count
        stats = LabelStats(self.psi)
        for c in self.chunks:
            lo, hi = max(a, c.start), min(b, c.start + len(c))
            if lo < hi:
                stats.add_chunk(c, lo - c.start, hi - c.start)
        while self.chunks and self.chunks[0].start + len(self.chunks[0]) <= b:
            self.chunks.popleft()
        self.shard_start = b
        record = {"path": name, "split": self.split, "start": a, "count": count, "bytes": nbytes,
                  "sha256": sha, "stats": stats.to_dict()}
        self.on_record(record)
        _shard_written(record)

    def write(self, c: Chunk) -> None:
        if self.writer is None:
            self.writer = _ShardWriter(self.folder, self.split, self.maxcount, self.maxsize, self.start_shard,
                                       self._record)
        self.chunks.append(c)
        soft = c.soft.astype(self.dtype, copy=False)
        for j in range(len(c)):
            i = c.start + j
            meta: dict[str, Any] = {"key": self.keys[i], "split": self.split, "index": i}
            if self.v:
                meta.update(aux_hard=c.hard[j].tolist(), entropy=c.entropy[j].tolist(),
                            views=self.views[i].tolist())  # type: ignore[index]
            else:
                meta.update(aux_hard=int(c.hard[j]), entropy=float(c.entropy[j]))
            sample: dict[str, Any] = {"__key__": wds_key(self.keys[i]), "cls": b"%d" % int(c.primary[j]),
                                      "aux.npy": self.header + soft[j].tobytes(),
                                      "json": json.dumps(meta).encode()}
            if self.images is not None:
                sample["png"] = encode_png(self.images[i])
            self.writer.write(sample)

    def end_split(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        self.end_split()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
