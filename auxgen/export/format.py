"""Facts of the export format that writers, readers and docs/format.md must agree on."""

from __future__ import annotations

import re

from auxgen.errors import AuxgenError

FORMAT_NAME = "auxgen-labels"
FORMAT_VERSION = 2                       # 2: reversible WebDataset keys (percent-escaped '.' and '%')
READABLE_VERSIONS = (1, 2)               # verify still reads version 1 exports (their '.' -> '_' keys)
SPLITS = ("train", "test")
KINDS = ("hdf5", "wds", "parquet")     # the --format values
FOLDER_KINDS = ("wds", "parquet")      # exports that are a folder (the others: one file with files beside it)
MANIFEST_NAME = "manifest.json"          # inside a shard folder
HDF5_MANIFEST_SUFFIX = ".manifest.json"  # beside an HDF5 file: labels/c100.h5.manifest.json
STATE_NAME = ".auxgen-export.json"       # resume state of an unfinished shard export
SHARD_PATTERN = "{split}-%06d.tar"
PARQUET_PATTERN = "split={split}/part-0.parquet"  # hive-style: the folder reads as one table with a split column
PARQUET_MANIFEST_NAME = "_manifest.json"  # inside a parquet folder: dataset readers skip names starting with _
OLD_PARQUET_PATTERN = "{split}.parquet"  # the tables of parquet exports written before the hive layout (still read)
PARQUET_METADATA_KEY = "auxgen"         # the parquet key-value metadata entry holding the export's facts (JSON)
DEFAULT_SHARD_SIZE = 256 * 10**6
TAR_TRAILER = 1024 + 10240               # end-of-archive blocks plus the padding to a full tar record
# Exports are data to share: world-readable, whatever the umask (run directories stay private)
EXPORT_FILE_MODE = 0o644

_ESCAPES = {"%": "%25", ".": "%2E"}
_UNESCAPE = re.compile(r"%(25|2E)")


def wds_key(key: str, version: int = FORMAT_VERSION) -> str:
    """The webdataset `__key__` of a sample key.

    webdataset ends a key at the first dot of a member's file name, so dots cannot stay. Version 2
    percent-escapes '%' and '.' ('%25', '%2E'), which keeps keys distinct and reversible
    (`key_of_wds`); version 1 replaced '.' by '_', which made `a.b.png` and `a_b.png` collide.
    """
    if version == 1:
        return key.replace(".", "_")
    return "".join(_ESCAPES.get(ch, ch) for ch in key)


def key_of_wds(wkey: str) -> str:
    """The sample key a (version 2) `__key__` stands for: the inverse of `wds_key`."""
    return _UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else ".", wkey)


def shard_name(split: str, index: int) -> str:
    return SHARD_PATTERN.format(split=split) % index


def parquet_name(split: str) -> str:
    return PARQUET_PATTERN.format(split=split)


def is_folder_kind(kind: str) -> bool:
    """An export of this kind is a folder holding its files and manifest.json (wds, parquet)."""
    return kind in FOLDER_KINDS


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | int | None) -> int | None:
    """'256MB', '1GB', '512KiB' or a byte count -> bytes (decimal units, KiB/MiB/GiB binary)."""
    if text is None or isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise AuxgenError(f"--shard-size {text!r}: expected bytes or a size like 256MB, 1GB, 512KiB")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _UNITS[unit])
