"""WebDataset sink: per-split tar shards, tar members built by the standard library's `tarfile`.

Each shard is written under a temporary name, hashed while it is written, renamed when
complete and then recorded in the resume state, so an interrupted export keeps every
finished shard and `--resume` continues at the first shard that is missing or damaged.

The tars are what webdataset's own writer produces (members `{__key__}.{ext}` in sorted
extension order, mode 0444, owner `bigdata`), written here directly because its writer
offers no supported way to choose the tar format, and GNU headers are much cheaper to build
than the PAX headers tarfile uses by default (tarfile copies each TarInfo to build one). The
headers are `TarInfo.tobuf`'s, as `TarFile.addfile` builds them (filled into one header tarfile
built, since only name, size and checksum differ), and a sample's members are joined and written
(and hashed) at once: the bytes are tarfile's, without its per-member header building, copies,
file-object wrappers and member list (tests/test_export.py compares the two byte for byte).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

from auxgen.export.format import EXPORT_FILE_MODE, TAR_TRAILER, wds_key
from auxgen.export.layout import shard_name, temp_path
from auxgen.export.pipeline import Chunk
from auxgen.export.sink import SplitSource, add_chunk
from auxgen.label_stats import LabelStats

TAR_FORMAT = tarfile.GNU_FORMAT
TAR_ENCODING = "utf-8"      # member names, whatever the machine's locale
MEMBER_MODE = 0o444         # as webdataset's TarWriter
MEMBER_OWNER = "bigdata"    # as webdataset's TarWriter
MEMBER_MTIME = 0            # shards are reproducible byte for byte


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


def _blocks(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def tar_bytes(key: str, files: dict[str, bytes]) -> int:
    """Bytes a sample adds to a GNU tar: per file a header, a long-name record when the name
    exceeds 100 bytes, and the data, each padded to 512-byte blocks."""
    total = 0
    for ext, data in files.items():
        name = len(f"{key}.{ext}".encode(TAR_ENCODING))
        if name > tarfile.LENGTH_NAME:
            total += tarfile.BLOCKSIZE + _blocks(name + 1)
        total += tarfile.BLOCKSIZE + _blocks(len(data))
    return total


def _tarinfo_header(name: str, size: int) -> bytes:
    """A member's header as TarFile.addfile builds it (TarInfo.tobuf), about 35 us on this machine's CPU."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MEMBER_MTIME, MEMBER_MODE
    info.uname = info.gname = MEMBER_OWNER
    return info.tobuf(TAR_FORMAT, TAR_ENCODING, "surrogateescape")


# Every member header is the same but for its name (bytes 0-100), size (124-136) and checksum (148-156, the
# byte sum of the header with the field read as spaces): so the others are built once, by tarfile itself
_TEMPLATE = _tarinfo_header("", 0)
_IDS, _MTIME, _REST = _TEMPLATE[100:124], _TEMPLATE[136:148], _TEMPLATE[156:]  # mode uid gid | mtime | type...
_TEMPLATE_SUM = sum(_IDS) + sum(_MTIME) + 8 * ord(" ") + sum(_REST)


def member_header(name: str, size: int) -> bytes:
    """TarInfo.tobuf's header for a member, filled into the template (a few us); long names (a GNU long-name
    header) and sizes of 8 GiB or more go through tarfile."""
    raw = name.encode(TAR_ENCODING, "surrogateescape")
    if len(raw) > tarfile.LENGTH_NAME - 1 or size >= 8 ** 11:  # tarfile would add a header or base-256
        return _tarinfo_header(name, size)
    name_field, size_field = raw.ljust(tarfile.LENGTH_NAME, b"\0"), b"%011o\0" % size
    chksum = _TEMPLATE_SUM + sum(name_field) + sum(size_field)
    return b"".join((name_field, _IDS, size_field, _MTIME, b"%06o\0 " % chksum, _REST))


def sample_tar(key: str, files: dict[str, bytes]) -> bytes:
    """One sample's tar members, `{key}.{ext}` in sorted order: each header (as TarFile.addfile builds it),
    the data, NUL padding to a whole block."""
    parts = []
    for ext in sorted(files):
        data = files[ext]
        parts += [member_header(f"{key}.{ext}", len(data)), data, bytes(_blocks(len(data)) - len(data))]
    return b"".join(parts)


def tar_end(offset: int) -> bytes:
    """What TarFile.close writes at `offset`: two zero blocks, then zeros to a whole tar record."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return bytes(2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE)


def _shard_written(record: dict[str, Any]) -> None:
    """Called after each shard is finished and recorded (a seam for tests that interrupt an export)."""


class _HashingFile:
    """A write-only file that hashes what passes through it, so no shard is read back to hash it."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by the shard writer's finish or abort
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> int:
        n = self.f.write(data)
        self.h.update(data)
        self.n += len(data)
        return n

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def new_shard(count: int, size: int, need: int, maxcount: int, maxsize: int) -> bool:
    """Whether a sample of `need` bytes starts a new shard after `count` samples of `size` bytes.

    The one packing rule: the shard writer applies it as it writes, and `plan_shards` ahead of
    writing, so that processes of a multi-process export cut shards exactly where one process does.
    """
    return count >= maxcount or (count > 0 and size + need + TAR_TRAILER > maxsize)


def plan_shards(needs: list[int], maxcount: int, maxsize: int) -> list[tuple[int, int]]:
    """(first sample, count) of each shard a split's samples of these tar sizes go into."""
    shards: list[tuple[int, int]] = []
    count = size = 0
    for i, need in enumerate(needs):
        if not shards or new_shard(count, size, need, maxcount, maxsize):
            shards.append((i, 0))
            count = size = 0
        count += 1
        size += need
        shards[-1] = (shards[-1][0], count)
    return shards


class _ShardWriter:
    """The shards of one split, with a hard size bound that counts tar headers.

    A new shard starts *before* a sample would push the current one past maxsize (or past
    maxcount samples), so a shard exceeds maxsize only if one sample alone does.
    """

    def __init__(self, folder: Path, split: str, maxcount: int, maxsize: int, start_shard: int,
                 on_shard: Callable[[str, int, int, str], None]) -> None:
        self.folder, self.split, self.maxcount, self.maxsize = folder, split, maxcount, maxsize
        self.shard, self.on_shard = start_shard, on_shard
        self.fh: _HashingFile | None = None
        self.name, self.count, self.size = "", 0, 0

    def _open(self) -> None:
        self.name = shard_name(self.split, self.shard)
        self.shard += 1
        self.fh = _HashingFile(temp_path(self.folder, self.name))
        self.count = self.size = 0

    def _finish(self) -> None:
        assert self.fh is not None
        self.fh.write(tar_end(self.fh.n))  # end-of-archive blocks, padded to a whole tar record
        fh, tmp, final = self.fh, temp_path(self.folder, self.name), self.folder / self.name
        fh.flush()
        os.fsync(fh.f.fileno())
        fh.close()
        os.chmod(tmp, EXPORT_FILE_MODE)  # before the rename: a finished shard never appears private
        os.replace(tmp, final)
        self.fh = None
        self.on_shard(self.name, self.count, fh.n, fh.h.hexdigest())

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: `files` maps extensions (cls, aux.npy, ...) to their bytes."""
        need = tar_bytes(key, files)
        if self.fh is None or new_shard(self.count, self.size, need, self.maxcount, self.maxsize):
            if self.fh is not None:
                self._finish()
            self._open()
        assert self.fh is not None
        self.fh.write(sample_tar(key, files))
        self.count += 1
        self.size += need

    def close(self) -> None:
        if self.fh is not None:
            self._finish()

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file) without finishing it."""
        if self.fh is not None:
            self.fh.close()
            temp_path(self.folder, self.name).unlink(missing_ok=True)
        self.fh = None


class WdsSink:
    """Writes samples into `folder/{split}-NNNNNN.tar` shards; reports each finished shard to `on_record`.

    A record holds the shard's name, split, first sample, count, bytes, sha256 and the label
    statistics of its samples (so a resumed export can report statistics of the whole export).
    """

    def __init__(self, folder: Path, dtype: str, num_aux: int, views: int, maxcount: int, maxsize: int,
                 psi: tuple[int, ...], on_record: Callable[[dict[str, Any]], None]) -> None:
        self.folder, self.dtype, self.k, self.v = folder, np.dtype(dtype), num_aux, views
        self.maxcount, self.maxsize, self.psi, self.on_record = maxcount, maxsize, psi, on_record
        self.header = npy_header((views, num_aux) if views else (num_aux,), self.dtype)
        self.writer: _ShardWriter | None = None

    def begin_split(self, split: SplitSource) -> None:
        self.split = split
        self.shard_start = split.start
        self.chunks: deque[Chunk] = deque()
        self.writer = None  # opened with the first sample: a finished split gets no empty shard

    def _record(self, name: str, count: int, nbytes: int, sha: str) -> None:
        a, b = self.shard_start, self.shard_start + count
        stats = LabelStats(self.psi)
        for c in self.chunks:
            lo, hi = max(a, c.start), min(b, c.start + len(c))
            if lo < hi:
                add_chunk(stats, c, lo - c.start, hi - c.start)
        while self.chunks and self.chunks[0].start + len(self.chunks[0]) <= b:
            self.chunks.popleft()
        self.shard_start = b
        record = {"path": name, "split": self.split.name, "start": a, "count": count, "bytes": nbytes,
                  "sha256": sha, "stats": stats.to_dict()}
        self.on_record(record)
        _shard_written(record)

    def write(self, chunk: Chunk) -> None:
        sp = self.split
        if self.writer is None:
            self.writer = _ShardWriter(self.folder, sp.name, self.maxcount, self.maxsize, sp.start_shard,
                                       self._record)
        self.chunks.append(chunk)
        for key, files in self.samples(sp, chunk):
            self.writer.write(key, files)

    def samples(self, sp: SplitSource, chunk: Chunk) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Each sample of a chunk as (__key__, {extension: bytes}): exactly what goes into a shard."""
        soft = chunk.soft.astype(self.dtype, copy=False)
        for j in range(len(chunk)):
            i = chunk.start + j
            meta: dict[str, Any] = {"key": sp.keys[i], "split": sp.name, "index": i}
            if self.v:
                assert sp.views is not None
                meta.update(aux_hard=chunk.hard[j].tolist(), entropy=chunk.entropy[j].tolist(),
                            views=sp.views[i].tolist())
            else:
                meta.update(aux_hard=int(chunk.hard[j]), entropy=float(chunk.entropy[j]))
            files = {"cls": b"%d" % int(chunk.primary[j]), "aux.npy": self.header + soft[j].tobytes(),
                     "json": json.dumps(meta).encode()}
            if sp.images is not None:
                files["png"] = encode_png(sp.images[i])
            yield wds_key(sp.keys[i]), files

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
