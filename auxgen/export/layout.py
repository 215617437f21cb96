"""Every name an export gives its files, derived in this one place (docs/format.md lists them).

A shard folder holds `{split}-NNNNNN.tar` shards, `manifest.json`, the generator files, and
while unfinished the resume state (`.auxgen-export.json`), one record per process of a
multi-process export (`.auxgen-export.rank-R.json`) and `.NAME.tmp` files being written. A
parquet folder holds `{split}.parquet` tables, `manifest.json` and the generator files (and
`.NAME.tmp` files while being written). An HDF5 export is one file with its manifest and
generator files beside it.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path

from auxgen.export.format import (
    HDF5_MANIFEST_SUFFIX,
    MANIFEST_NAME,
    SPLITS,
    STATE_NAME,
    is_folder_kind,
    parquet_name,
    shard_name,
)
from auxgen.export.generator_files import GENERATOR_FORMATS, generator_path

RANK_STATE_PATTERN = ".auxgen-export.rank-{rank}.json"
# shard_name's pattern as a regular expression: the splits, a dash, six digits
SHARD = re.compile("^(" + "|".join(SPLITS) + r")-\d{6}\.tar$")
_RANK_STATE = re.compile("^" + re.escape(RANK_STATE_PATTERN).replace(r"\{rank\}", r"\d+") + "$")
_PARQUET = frozenset(parquet_name(s) for s in SPLITS)
_TEMP = re.compile(r"^\..*\.tmp$")
_GENERATORS = frozenset(generator_path(Path("."), "wds", f).name for f in GENERATOR_FORMATS)


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
    return (name in (MANIFEST_NAME, STATE_NAME) or name in _GENERATORS or name in _PARQUET or bool(SHARD.match(name))
            or bool(_RANK_STATE.match(name)) or bool(_TEMP.match(name)))


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
    return out / MANIFEST_NAME if is_folder_kind(kind) else hdf5_paths(out)[1]


__all__ = ["RANK_STATE_PATTERN", "SHARD", "export_base", "hdf5_paths", "hdf5_temps", "is_ours",
           "is_partial", "is_shard", "manifest_of", "new_hdf5_temp", "rank_state_name", "rank_states",
           "shard_name", "temp_path"]
