"""Reading an export back (HDF5 file, shard folder or parquet folder) as numpy arrays, for verify and tests.

Damage never raises: whatever cannot be read becomes a line in `Export.problems`. Shards are
read with webdataset's own tar iteration and key grouping, so a sample reads here exactly as
it reads for a stock `webdataset` pipeline.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from auxgen.errors import AuxgenError
from auxgen.export.format import (
    FORMAT_VERSION,
    HDF5_MANIFEST_SUFFIX,
    MANIFEST_NAME,
    PARQUET_MANIFEST_NAME,
    PARQUET_METADATA_KEY,
    SPLITS,
)
from auxgen.export.manifest import check_files
from auxgen.paths import check_regular_file, one_line, regular_file_problem

_SHARD = re.compile(r"^(train|test)-\d{6}\.tar$")
_H5_FIELDS = ("keys", "index", "primary", "aux_soft", "aux_hard", "entropy")
# a table of the hive layout (split=train/part-0.parquet), or of the older one (train.parquet)
_PARQUET = re.compile(r"^split=(train|test)/part-0\.parquet$|^(train|test)\.parquet$")
_PARQUET_GLOBS = ("split=*/*.parquet", "*.parquet")  # where tables of either layout may sit
_PQ_FIELDS = ("key", "index", "primary", "aux_soft", "aux_hard", "entropy")
_PQ_SPLIT_FACTS = ("split", "count", "split_fingerprint")  # the metadata of one table, not of the export


@dataclass
class ExportSplit:
    """One split of an export as numpy arrays (rows in file order)."""

    keys: list[str]
    index: np.ndarray
    primary: np.ndarray
    aux_soft: np.ndarray           # [N, K] or [N, V, K], stored dtype
    aux_hard: np.ndarray           # [N] or [N, V]
    entropy: np.ndarray            # [N] or [N, V]
    views: np.ndarray | None = None      # [N, V, 3]
    images: list[np.ndarray | None] | None = None  # CHW uint8 per sample (shards with png)
    wds_keys: list[str] | None = None    # each sample's __key__ (shards)


@dataclass
class Export:
    """An export read back: what the files hold, and what went wrong reading them."""

    path: Path
    kind: str                      # hdf5, wds or parquet
    manifest: dict[str, Any] | None
    attrs: dict[str, Any]          # HDF5 file attributes, or the parquet tables' `auxgen` metadata (empty for shards)
    splits: dict[str, ExportSplit]
    problems: list[str]            # damage found while reading, files that do not match the manifest included
    readable: bool                 # the label arrays could be read at all
    files_checked: int = 0         # files the manifest lists (each checked for size and sha256)

    @property
    def meta(self) -> dict[str, Any]:
        """Format facts from the HDF5 attributes (or parquet metadata), else from the manifest."""
        return self.attrs or self.manifest or {}

    @property
    def version(self) -> Any:
        """The format_version the export claims (HDF5 attributes or parquet metadata first, then the manifest)."""
        return self.meta.get("format_version", FORMAT_VERSION)


def numeric_problem(export: Export) -> str | None:
    """Why the arrays cannot be used as numbers (labels not floats, indices or views not integers), or None."""
    for name, s in export.splits.items():
        for field, kinds in (("aux_soft", "f"), ("index", "iu"), ("primary", "iu"), ("views", "iu")):
            a = getattr(s, field)
            if a is not None and a.dtype.kind not in kinds:
                return f"/{name} {field} holds {a.dtype} values, not {'floats' if kinds == 'f' else 'integers'}"
    return None


def manifest_path(path: Path) -> Path:
    """The manifest of an export: inside a shard folder, inside a parquet folder (`_manifest.json`; a parquet
    export written before the hive layout has `manifest.json`), or beside an HDF5 file."""
    if not path.is_dir():
        return path.with_name(path.name + HDF5_MANIFEST_SUFFIX)
    hive = path / PARQUET_MANIFEST_NAME
    return hive if os.path.lexists(hive) or any(path.glob("split=*")) else path / MANIFEST_NAME


def parquet_tables(folder: Path) -> list[str]:
    """The tables in a parquet folder, of either layout, as paths relative to it."""
    return sorted({p.relative_to(folder).as_posix() for g in _PARQUET_GLOBS for p in folder.glob(g)})


def folder_kind(folder: Path, manifest: dict[str, Any] | None) -> str:
    """wds or parquet: what the manifest says a folder is, else what it holds (tables and no shards: parquet)."""
    said = (manifest or {}).get("kind")
    if said in ("wds", "parquet"):
        return str(said)
    tables, shards = bool(parquet_tables(folder)), any(folder.glob("*.tar"))
    return "parquet" if tables and not shards else "wds"


def read_export(path: str | Path) -> Export:
    """Read an HDF5 export, a shard folder or a parquet folder and check its files against the manifest; damage
    becomes problems."""
    path = Path(path)
    if not path.exists():
        raise AuxgenError(f"--labels {path} does not exist")
    if not path.is_dir():
        check_regular_file(path, "--labels")  # a FIFO or device would block the reader forever
    problems: list[str] = []
    manifest = _read_manifest(manifest_path(path), problems)
    kind = folder_kind(path, manifest) if path.is_dir() else "hdf5"
    checked = 0
    if manifest is not None:
        problems += check_files(manifest, path if path.is_dir() else path.parent)
        checked = len(manifest["files"]) if isinstance(manifest.get("files"), list) else 0
    if kind == "hdf5":
        attrs, splits, readable = _read_hdf5(path, problems)
    elif kind == "parquet":
        attrs, splits, readable = _read_parquet(path, problems)
    else:
        attrs, readable = {}, True
        splits = _read_shards(path, problems)
    return Export(path, kind, manifest, attrs, splits, problems, readable and bool(splits), checked)


def _read_manifest(mpath: Path, problems: list[str]) -> dict[str, Any] | None:
    problem = regular_file_problem(mpath)
    if problem:
        problems.append(f"no manifest ({mpath} {problem})")
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, OSError):  # not JSON, not UTF-8, unreadable
        manifest = None
    if not isinstance(manifest, dict):
        problems.append(f"manifest {mpath} is not a JSON object")
        return None
    return manifest


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _read_hdf5(path: Path, problems: list[str]) -> tuple[dict[str, Any], dict[str, ExportSplit], bool]:
    import h5py

    splits: dict[str, ExportSplit] = {}
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            for name in f:
                g = f[name]
                if name not in SPLITS or not isinstance(g, h5py.Group):
                    problems.append(f"unexpected {'group' if isinstance(g, h5py.Group) else 'object'} /{name}")
                    continue
                missing = [d for d in _H5_FIELDS if not isinstance(g.get(d), h5py.Dataset)]
                if missing:
                    problems.append(f"/{name} lacks {', '.join(missing)}")
                    continue
                keys = [k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in g["keys"][()]]
                views = g["views"][()] if isinstance(g.get("views"), h5py.Dataset) else None
                splits[name] = ExportSplit(keys, g["index"][()], g["primary"][()], g["aux_soft"][()],
                                           g["aux_hard"][()], g["entropy"][()], views)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        problems.append(f"{path} cannot be read as HDF5 (truncated or damaged?): {one_line(e, 160)}")
        return {}, {}, False
    return attrs, splits, True


def _one_line(e: BaseException) -> str:
    """The first line of an exception's own message (webdataset appends ` @ STREAM` to it)."""
    return one_line(e, 400).split(" @ ")[0].strip()[:160] or type(e).__name__


def _shard_samples(path: Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """The samples of one shard as webdataset groups them ({"__key__", ext: bytes, ...})."""
    def unreadable(e: Exception) -> bool:
        problems.append(f"{path.name} is not a readable tar file: {_one_line(e)}")
        return True  # keep what was read; the damage is reported

    def ungroupable(e: Exception) -> bool:  # e.g. two members of one sample with the same name
        problems.append(f"{path.name}: {_one_line(e)}")
        return True

    def split_name(fname: str) -> tuple[str | None, str | None]:
        key, ext = base_plus_ext(fname)
        if key is None:
            problems.append(f"{path.name}: member {fname} has no extension (webdataset skips it)")
        return key, ext

    problem = regular_file_problem(path)
    if problem:  # a FIFO named like a shard would block the reader forever
        problems.append(f"{path.name} {problem}")
        return
    try:
        with open(path, "rb") as stream:
            files = tar_file_expander([{"url": str(path), "stream": stream}], handler=unreadable)
            yield from group_by_keys(files, keys=split_name, handler=ungroupable)
    except OSError as e:
        problems.append(f"{path.name} cannot be read ({e.strerror})")


def _read_shards(folder: Path, problems: list[str]) -> dict[str, ExportSplit]:
    from PIL import Image

    tars = sorted(p.name for p in folder.glob("*.tar"))
    if not tars:
        problems.append(f"no shards (*.tar) in {folder}")
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in tars:
        m = _SHARD.match(name)
        if not m:
            problems.append(f"{name} is not named SPLIT-NNNNNN.tar")
            continue
        split = m.group(1)
        for files in _shard_samples(folder / name, problems):
            wkey = files["__key__"]
            missing = [e for e in ("cls", "aux.npy", "json") if e not in files]
            if missing:
                problems.append(f"{name}: sample {wkey} lacks {', '.join(missing)}")
                continue
            try:
                meta = json.loads(files["json"])
                if not isinstance(meta, dict):
                    raise TypeError("json is not an object")
                aux = np.load(io.BytesIO(files["aux.npy"]), allow_pickle=False)
                primary = int(files["cls"].decode().strip())
                image = None
                if "png" in files:
                    with Image.open(io.BytesIO(files["png"])) as im:
                        arr = np.asarray(im)
                    image = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            except Exception as e:  # any damage to one sample's files
                problems.append(f"{name}: sample {wkey} cannot be decoded ({type(e).__name__})")
                continue
            if meta.get("split") != split:
                problems.append(f"{name}: sample {wkey} says split {meta.get('split')!r}")
            rows.setdefault(split, []).append({"wkey": wkey, "meta": meta, "aux": aux, "primary": primary,
                                               "image": image})
    splits = {}
    for split, rs in rows.items():
        try:
            splits[split] = ExportSplit(
                keys=[str(r["meta"].get("key")) for r in rs],
                index=np.array([int(r["meta"].get("index", -1)) for r in rs], dtype=np.int64),
                primary=np.array([r["primary"] for r in rs], dtype=np.int64),
                aux_soft=np.stack([r["aux"] for r in rs]),
                aux_hard=np.array([r["meta"].get("aux_hard", -1) for r in rs], dtype=np.int64),
                entropy=np.array([r["meta"].get("entropy", np.nan) for r in rs], dtype=np.float32),
                views=(np.array([r["meta"]["views"] for r in rs], dtype=np.int64)
                       if all("views" in r["meta"] for r in rs) else None),
                images=[r["image"] for r in rs] if any(r["image"] is not None for r in rs) else None,
                wds_keys=[r["wkey"] for r in rs])
        except (ValueError, TypeError) as e:
            problems.append(f"split {split}: samples disagree in shape or type ({_one_line(e)})")
    return splits


# ------------------------------------------------------------------------------ parquet
def _read_parquet(folder: Path, problems: list[str]) -> tuple[dict[str, Any], dict[str, ExportSplit], bool]:
    """The `{split}.parquet` tables of a folder: their `auxgen` metadata (one for all tables) and their columns."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        problems.append("reading a parquet export needs pyarrow: pip install 'auxgen[parquet]'")
        return {}, {}, False
    names = parquet_tables(folder)
    if not names:
        problems.append(f"no tables (split=*/part-0.parquet) in {folder}")
    attrs: dict[str, Any] = {}
    splits: dict[str, ExportSplit] = {}
    readable = True
    for name in names:
        m = _PARQUET.match(name)
        if not m:
            problems.append(f"{name} is not named split=train/part-0.parquet or split=test/part-0.parquet")
            continue
        split, path = m.group(1) or m.group(2), folder / name
        if split in splits:
            problems.append(f"{name}: a second table of split {split}")
            continue
        problem = regular_file_problem(path)
        if problem:  # a FIFO named like a table would block the reader forever
            problems.append(f"{name} {problem}")
            readable = False
            continue
        try:
            pf = pq.ParquetFile(path)
            metadata = pf.schema_arrow.metadata or {}
            table = pf.read()
        except (OSError, ValueError, TypeError, pa.ArrowException) as e:
            problems.append(f"{name} cannot be read as parquet (truncated or damaged?): {one_line(e, 160)}")
            readable = False
            continue
        facts = _parquet_facts(name, metadata, problems)
        if facts is not None:
            own = {k: facts.pop(k, None) for k in _PQ_SPLIT_FACTS}
            if own["split"] != split:
                problems.append(f"{name}: its metadata says split {own['split']!r}")
            if own["count"] != table.num_rows:
                problems.append(f"{name} holds {table.num_rows} rows, its metadata says {own['count']}")
            if attrs and facts != attrs:
                problems.append(f"{name}: its metadata differs from that of the other table")
            attrs = attrs or facts
        missing = [c for c in _PQ_FIELDS if c not in table.column_names]
        if missing:
            problems.append(f"{name} lacks column(s) {', '.join(missing)}")
            readable = False
            continue
        try:
            cols = {c: _column(table.column(c), c) for c in (*_PQ_FIELDS, "views") if c in table.column_names}
        except (ValueError, TypeError, pa.ArrowException) as e:
            problems.append(f"{name}: {one_line(e, 160)}")
            readable = False
            continue
        if not (np.diff(cols["index"]) > 0).all():  # what pipelines/parquet_reader needs: row i is index i
            problems.append(f"{name}: rows are not in index order (docs/format.md)")
        keys = cols["key"]
        splits[split] = ExportSplit([k if isinstance(k, str) else str(k) for k in keys], cols["index"],
                                    cols["primary"], cols["aux_soft"], cols["aux_hard"], cols["entropy"],
                                    cols.get("views"))
    return attrs, splits, readable


def _parquet_facts(name: str, metadata: dict[bytes, bytes], problems: list[str]) -> dict[str, Any] | None:
    raw = metadata.get(PARQUET_METADATA_KEY.encode())
    if raw is None:
        problems.append(f"{name} has no {PARQUET_METADATA_KEY!r} metadata: not an auxgen export")
        return None
    try:
        facts = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        facts = None
    if not isinstance(facts, dict):
        problems.append(f"{name}: its {PARQUET_METADATA_KEY!r} metadata is not a JSON object")
        return None
    return facts


def _column(col: Any, name: str) -> Any:
    """A column as numpy ([N, ...] for nested fixed-size lists, a list of str for `key`); ValueError for nulls and
    for types docs/format.md does not give the column (variable-length lists, strings but in `key`), which
    pipelines/parquet_reader refuses too."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise ValueError(f"column {name} holds {arr.null_count} null value(s)")
    if name == "key" and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return arr.to_pylist()
    shape = [len(arr)]
    while pa.types.is_fixed_size_list(arr.type):
        shape.append(int(arr.type.list_size))
        arr = arr.flatten()
        if arr.null_count:
            raise ValueError(f"column {name} holds null values inside its lists")
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise ValueError(f"column {name} is of type {col.type}, not numbers in fixed-size lists (docs/format.md)")
    return arr.to_numpy(zero_copy_only=False, writable=True).reshape(shape)
