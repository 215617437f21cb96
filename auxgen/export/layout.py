"""Every name an export gives its files, derived in this one place (docs/format.md lists them).

A shard folder holds `{split}-NNNNNN.tar` shards, `manifest.json`, the generator files, and
while unfinished the resume state (`.auxgen-export.json`), one record per process of a
multi-process export (`.auxgen-export.rank-R.json`) and `.NAME.tmp` files being written. A
parquet folder holds `split={split}/part-0.parquet` tables, `_manifest.json` and the generator files as
`_generator.*` (and `.NAME.tmp` files while being written); one written before that layout holds
`{split}.parquet`, `manifest.json` and `generator.*`. An HDF5 export is one file with its manifest and
generator files beside it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path

from auxgen.export.format import (
    FORMAT_NAME,
    HDF5_MANIFEST_SUFFIX,
    MANIFEST_NAME,
    OLD_PARQUET_PATTERN,
    PARQUET_MANIFEST_NAME,
    SPLITS,
    STATE_NAME,
    is_folder_kind,
    parquet_name,
    shard_name,
)
from auxgen.export.generator_files import EXTRA_FILE, GENERATOR_FORMATS, generator_path

RANK_STATE_PATTERN = ".auxgen-export.rank-{rank}.json"
# shard_name's pattern as a regular expression: the splits, a dash, six digits
SHARD = re.compile("^(" + "|".join(SPLITS) + r")-\d{6}\.tar$")
_RANK_STATE = re.compile("^" + re.escape(RANK_STATE_PATTERN).replace(r"\{rank\}", r"\d+") + "$")
# a parquet folder's own entries: split folders, and the tables of the older layout
_PARQUET = frozenset([*(parquet_name(s).split("/")[0] for s in SPLITS), *(OLD_PARQUET_PATTERN.format(split=s)
                                                                          for s in SPLITS)])
_PARQUET_PART = parquet_name(SPLITS[0]).split("/")[1]  # the one table inside a split folder
_TEMP = re.compile(r"^\..*\.tmp$")
_GENERATORS = frozenset(generator_path(Path("."), k, f).name for k in ("wds", "parquet") for f in GENERATOR_FORMATS)


def rank_state_name(rank: int) -> str:
    """The file in which process `rank` of a multi-process export records its finished shards."""
    return RANK_STATE_PATTERN.format(rank=rank)


def rank_states(out: Path) -> list[Path]:
    """The per-process records in a shard folder."""
    return sorted(p for p in out.iterdir() if _RANK_STATE.match(p.name))


def temp_path(folder: Path, name: str) -> Path:
    """Where `name` is written before it is renamed into place (the names `_TEMP` and `is_ours` accept)."""
    return folder / f".{name}.tmp"


def is_shard(name: str, split: str | None = None) -> bool:
    """A shard's name (of `split`, when given)."""
    return bool(SHARD.match(name)) and (split is None or name.startswith(f"{split}-"))


def is_ours(name: str) -> bool:
    """A name an export writes into a shard folder (anything else there belongs to someone else)."""
    return (name in (MANIFEST_NAME, PARQUET_MANIFEST_NAME, STATE_NAME) or name in _GENERATORS or name in _PARQUET
            or bool(SHARD.match(name))
            or bool(_RANK_STATE.match(name)) or bool(_TEMP.match(name)))


def is_temp(name: str) -> bool:
    """A file being written (renamed into place when done, removed when its export fails)."""
    return bool(_TEMP.match(name))


def is_partial(name: str) -> bool:
    """A shard or a file being written: what a resumed export removes unless it keeps it."""
    return bool(SHARD.match(name)) or bool(_TEMP.match(name))


def export_base(out: Path, kind: str) -> Path:
    """The folder the manifest's file paths are relative to: the export's folder, or the HDF5 file's."""
    return out if is_folder_kind(kind) else out.parent


def hdf5_paths(out: Path) -> tuple[Path, ...]:
    """The HDF5 file, its manifest, and every generator file an export may put beside it."""
    return (out, out.with_name(out.name + HDF5_MANIFEST_SUFFIX),
            *(generator_path(out, "hdf5", f) for f in GENERATOR_FORMATS))


def new_hdf5_temp(out: Path) -> str:
    """A new, private temporary file beside an HDF5 --out, `.NAME.RANDOM.tmp` (renamed into place when done)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    return tmp


def hdf5_temps(out: Path) -> list[str]:
    """Temporary files an interrupted export to this HDF5 --out left (those of `new_hdf5_temp`)."""
    return glob.glob(os.path.join(glob.escape(str(out.parent)), f".{glob.escape(out.name)}.*.tmp"))


def manifest_of(out: Path, kind: str) -> Path:
    if kind == "parquet":
        return out / PARQUET_MANIFEST_NAME
    return out / MANIFEST_NAME if is_folder_kind(kind) else hdf5_paths(out)[1]


def split_folder_problem(path: Path) -> str | None:
    """Why `path` is not a parquet export's split folder (a real folder of the split's table and files being
    written), or None."""
    if path.name not in _PARQUET or not stat.S_ISDIR(os.lstat(path).st_mode):
        return "is not a regular file (a link, folder, FIFO or device)"
    for p in path.iterdir():
        if (p.name != _PARQUET_PART and not is_temp(p.name)) or not stat.S_ISREG(os.lstat(p).st_mode):
            return f"holds {p.name}, which no export writes there"
    return None


def remove(path: Path) -> None:
    """Remove an export's file, or a split folder with the files an export wrote in it (never anything else)."""
    if os.path.isdir(path) and not os.path.islink(path):
        if split_folder_problem(path) is None:
            for p in path.iterdir():
                p.unlink(missing_ok=True)
            path.rmdir()
        return
    path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ what --force may replace
def not_ours(path: Path, kind: str) -> str | None:
    """Why the file at `path`, where an export of `kind` puts one of its files, cannot be shown to be one an
    earlier auxgen export wrote (None when it can): --force replaces only such files.

    It must be a regular file (not a link, folder or FIFO) whose content says auxgen wrote it: a manifest
    naming the format, an HDF5 file whose attributes do, a generator file carrying auxgen's metadata record.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return split_folder_problem(path)
        if path.name in (MANIFEST_NAME, PARQUET_MANIFEST_NAME) or path.name.endswith(HDF5_MANIFEST_SUFFIX):
            ours = _is_our_manifest(path, kind)
        elif path.name in _GENERATORS or any(path.name.endswith("." + g) for g in _GENERATORS):
            ours = _is_our_generator(path)
        else:
            ours = _is_our_hdf5(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    return None if ours else "is not a file an auxgen export wrote"


def _is_our_manifest(path: Path, kind: str) -> bool:
    """A manifest of an export that may stand where `kind` goes (any folder kind replaces any other)."""
    try:
        m = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    kinds = ("hdf5",) if not is_folder_kind(kind) else ("wds", "parquet")
    return isinstance(m, dict) and m.get("format") == FORMAT_NAME and m.get("kind") in kinds


def _is_our_hdf5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
    except Exception:  # h5py raises OSError, ValueError or its own errors for a file that is not HDF5
        return False
    return (value.decode() if isinstance(value, bytes) else value) == FORMAT_NAME


def _is_our_generator(path: Path) -> bool:
    """A .pt2 or TorchScript archive holding auxgen's metadata record, or an ONNX model naming it."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("/extra/" + EXTRA_FILE) for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return EXTRA_FILE.encode() in path.read_bytes()


def is_resume_state(path: Path) -> bool:
    """An unfinished shard export's resume state, as far as --force needs to know (a JSON object with params)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("params"), dict)


__all__ = ["RANK_STATE_PATTERN", "SHARD", "export_base", "hdf5_paths", "hdf5_temps", "is_ours", "is_partial",
           "is_resume_state", "is_temp", "is_shard", "manifest_of", "new_hdf5_temp", "not_ours", "rank_state_name",
           "rank_states", "remove", "shard_name", "split_folder_problem", "temp_path"]
