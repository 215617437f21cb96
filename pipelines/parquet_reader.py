"""Batches from an auxgen parquet export (`auxgen export --format parquet`): pyarrow + numpy.

    from pipelines.parquet_reader import LabelTable
    labels = LabelTable("labels/c100")     # the folder: split=train/part-0.parquet, ..., _manifest.json
    for batch in labels.batches("train", batch_size=256, shuffle=True, seed=epoch):
        x = my_images[batch["index"]]
        step(x, batch["primary"], batch["aux_soft"])

Each table is read once, from bytes checked against the sha256 the manifest lists, and its labels
are checked as docs/format.md says (shapes, finite probabilities inside their block, each table the split
and row count the manifest lists, rows in index order). The folder is plain hive-partitioned parquet:
`pandas.read_parquet("labels/c100")` or `pyarrow.parquet.read_table("labels/c100")` give one table with a
`split` column, Spark `spark.read.parquet("labels/c100")` too, DuckDB
`SELECT * FROM read_parquet('labels/c100/*/*.parquet', hive_partitioning = true)`. Exports written before
that layout (`train.parquet`, `test.parquet`, `manifest.json`) are read as well.

Script:  python pipelines/parquet_reader.py labels/c100 [--images train_images.npy | --image-root photos] [--lr 2.0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script (python pipelines/parquet_reader.py): import pipelines from the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import _common  # noqa: E402
from pipelines.numpy_reader import LabelFile, add_model_options, describe  # noqa: E402

METADATA_KEY = b"auxgen"
MANIFESTS = ("_manifest.json", "manifest.json")  # the hive layout's, then the older layout's
TABLES = ("split={split}/part-0.parquet", "{split}.parquet")  # likewise
COLUMNS = ("key", "index", "primary", "aux_soft", "aux_hard", "entropy")


def _column(col: Any, where: str, strings: bool = False) -> Any:
    """A column as numpy, nested fixed-size lists as [N, ...] (strings, where allowed, as objects); ExportError
    for nulls, variable-length lists and strings elsewhere."""
    import pyarrow as pa

    arr = col.combine_chunks()
    if arr.null_count:
        raise _common.ExportError(f"{where} holds null values; the export is damaged")
    if strings and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return np.array(arr.to_pylist(), dtype=object)
    shape = [len(arr)]
    while pa.types.is_fixed_size_list(arr.type):
        shape.append(arr.type.list_size)
        arr = arr.flatten()
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)) or arr.null_count:
        raise _common.ExportError(f"{where} is of type {col.type}, not numbers in fixed-size lists")
    return arr.to_numpy(zero_copy_only=False, writable=True).reshape(shape)


def read_table(folder: str | Path, split: str, manifest: dict[str, Any], name: str
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One split's table (`name`, as the manifest lists it) as numpy arrays (keys under "keys") and its `auxgen`
    metadata, checked."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _common.ExportError("reading a parquet export needs pyarrow (pip install pyarrow)") from None
    path, data = _common.read_listed(folder, manifest, name)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _common.ExportError(f"{path} cannot be read as parquet: {' '.join(str(e).split())[:120]}") from None
    try:
        attrs = json.loads((table.schema.metadata or {})[METADATA_KEY])
    except (KeyError, ValueError, UnicodeDecodeError):
        attrs = None
    if not isinstance(attrs, dict) or attrs.get("format") != _common.FORMAT:
        raise _common.ExportError(f"{path} is not an auxgen label table (no {METADATA_KEY.decode()!r} metadata "
                                  f"of format {_common.FORMAT!r})")
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise _common.ExportError(f"{path} lacks column(s) {', '.join(missing)}")
    arrays = {c: _column(table.column(c), f"{path} column {c}", c == "key") for c in (*COLUMNS, "views")
              if c in table.column_names}
    arrays["keys"] = arrays.pop("key")
    _check_rows(path, split, arrays["index"], attrs, manifest)
    _common.check_labels(arrays, attrs, str(path))
    return arrays, attrs


def _check_rows(path: Path, split: str, index: np.ndarray, attrs: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The table is the split it is listed as, whole: its metadata's split, as many rows as the manifest counts,
    and rows that are indices 0..N-1 in order (docs/format.md), so row i of a batch is image index i."""
    n, counts = len(index), manifest.get("counts")
    count = counts.get(split) if isinstance(counts, dict) else None
    if attrs.get("split") != split:
        raise _common.ExportError(f"{path} is listed as the {split} table but its metadata says split "
                                  f"{attrs.get('split')!r}; the tables were swapped or replaced")
    if n != count or n != attrs.get("count"):
        raise _common.ExportError(f"{path} holds {n} rows but the manifest counts {count} and its metadata "
                                  f"{attrs.get('count')}; rows were added or removed")
    if index.dtype.kind not in "iu" or not np.array_equal(index, np.arange(n)):
        raise _common.ExportError(f"{path}: its rows are not indices 0..{n - 1} in order (docs/format.md); rows "
                                  f"were duplicated, dropped or reordered")


class LabelTable(LabelFile):
    """An auxgen parquet export's tables, read into memory; `batches` and `fit_softmax` as for an HDF5 export."""

    def __init__(self, folder: str) -> None:  # not super().__init__, which opens HDF5: the attributes are set here
        root = Path(folder)
        manifest = _common.read_manifest(next((root / m for m in MANIFESTS if (root / m).exists()),
                                              root / MANIFESTS[0]))
        if manifest.get("kind") != "parquet":
            raise _common.ExportError(f"{root} is a {manifest.get('kind')!r} export, not parquet")
        listed = {e.get("path") for e in manifest["files"] if isinstance(e, dict)}
        self.attrs: dict[str, Any] = {}
        self.splits: dict[str, dict[str, np.ndarray]] = {}
        for split in ("train", "test"):
            name = next((t.format(split=split) for t in TABLES if t.format(split=split) in listed), None)
            if name is None:
                continue
            arrays, attrs = read_table(root, split, manifest, name)
            self.splits[split] = arrays
            self.attrs = self.attrs or {k: v for k, v in attrs.items() if k not in ("split", "count",
                                                                                    "split_fingerprint")}
        if not self.splits:
            raise _common.ExportError(f"{root}: the manifest lists no table (split=train/part-0.parquet, ...)")
        self.psi = [int(p) for p in self.attrs["psi"]]
        self.num_primary, self.num_aux = int(self.attrs["num_primary"]), int(self.attrs["num_aux"])
        self.pad = int(self.attrs.get("pad", 0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Read an auxgen parquet label export (pyarrow + numpy).")
    ap.add_argument("labels", help="the export's folder (split=train/part-0.parquet, ..., _manifest.json)")
    add_model_options(ap)
    args = ap.parse_args(argv)
    describe(LabelTable(args.labels), args)

if __name__ == "__main__":
    _common.run_main(main)
