"""`ExportOptions`: everything that shapes an export, in one validated object."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace

from auxgen.errors import AuxgenError
from auxgen.export.format import DEFAULT_SHARD_SIZE, KINDS, SPLITS, parse_size
from auxgen.export.generator_files import parse_generator_formats

MIN_SHARD_SIZE = 64 * 1024
# what each option may be given as (Python callers pass them by name: a wrong type is one line, not a TypeError)
_TEXT, _INT, _BOOL, _NONE, _TEXTS = "text", "an integer", "True or False", "None", "a list of texts"
_KINDS = {"fmt": (_TEXT,), "checkpoint": (_TEXT,), "split": (_TEXT,), "dtype": (_TEXT,), "views": (_INT,),
          "images": (_BOOL,), "shard_size": (_INT, _TEXT, _NONE), "max_count": (_INT, _NONE),
          "generator_formats": (_TEXT, _TEXTS), "force": (_BOOL,), "resume": (_BOOL,), "batch_size": (_INT,),
          "seed": (_INT,), "data_root": (_TEXT, _NONE), "device": (_TEXT, _NONE)}
_NAMES = {"fmt": "format"}  # the keyword auxgen.export takes for a field of another name


def _kind(value: object) -> str | None:
    """What a value is, in _KINDS's words (bool is not an integer here: views=True is a mistake)."""
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, numbers.Integral):
        return _INT
    if isinstance(value, str):
        return _TEXT
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return _TEXTS
    return None


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how; field names are the `auxgen export` options (docs/format.md)."""

    fmt: str = "hdf5"                  # hdf5, wds or parquet
    checkpoint: str = "last"           # last, best (selected on the test set) or a path to a .pt file
    split: str = "all"                 # train, test or all
    dtype: str = "float32"             # storage type of aux_soft: float32 or float16
    views: int = 0                     # seeded augmented views per image (0: the images themselves)
    images: bool = True                # wds: put the PNG images into the shards
    shard_size: int | str | None = None  # wds: largest shard in bytes, or a size like "256MB"
    max_count: int | None = None       # wds: most samples per shard
    generator_formats: tuple[str, ...] | str = ()  # also write the generator: pt2, onnx, torchscript
    force: bool = False                # replace an earlier export at --out
    resume: bool = False               # wds: continue an interrupted export
    batch_size: int = 500              # rows per generator batch (recorded: recompute with it)
    seed: int = 0                      # seed of the --views draws
    data_root: str | None = None       # where the dataset is now, if it moved since training
    device: str | None = None          # where the generator runs (default: the run's choice)

    def _check_types(self) -> None:
        for f in fields(self):
            value, kinds = getattr(self, f.name), _KINDS[f.name]
            if _kind(value) not in kinds:
                raise AuxgenError(f"export option {_NAMES.get(f.name, f.name)} must be {' or '.join(kinds)}, got "
                                  f"{type(value).__name__} {str(value)[:80]!r}")

    @property
    def splits(self) -> list[str]:
        return list(SPLITS) if self.split == "all" else [self.split]

    def validated(self) -> ExportOptions:
        """These options checked, with shard_size in bytes (wds) or None (hdf5) and generator_formats a tuple;
        bad usage is an AuxgenError."""
        self._check_types()
        if self.fmt not in KINDS:
            raise AuxgenError(f"--format {self.fmt!r}: choose hdf5, wds or parquet")
        if self.split not in ("train", "test", "all"):
            raise AuxgenError(f"--split {self.split!r}: choose train, test or all")
        if self.dtype not in ("float32", "float16"):
            raise AuxgenError(f"--dtype {self.dtype!r}: choose float32 or float16")
        if self.views < 0:
            raise AuxgenError(f"--views {self.views}: give 0 (no views) or a positive number of views per image")
        if self.batch_size < 1:
            raise AuxgenError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.force and self.resume:
            raise AuxgenError("give --force (start over) or --resume (continue), not both")
        size = parse_size(self.shard_size)
        gens = parse_generator_formats(self.generator_formats)
        if self.fmt != "wds":
            for flag, given in (("--resume", self.resume), ("--shard-size", self.shard_size is not None),
                                ("--max-count", self.max_count is not None)):
                if given:
                    why = " (a parquet export is rewritten whole: run it again with --force)" \
                        if flag == "--resume" and self.fmt == "parquet" else ""
                    raise AuxgenError(f"{flag} applies to --format wds only{why}")
            if self.fmt == "parquet":
                from auxgen.export.parquet import require_pyarrow

                require_pyarrow()
            if self.fmt == "parquet" and self.dtype != "float32":
                raise AuxgenError(f"--dtype {self.dtype}: --format parquet stores float32 (Spark, DuckDB and "
                                  f"pandas read no float16 columns); use --format hdf5 or wds for float16")
            return replace(self, shard_size=None, generator_formats=gens)
        if self.max_count is not None and self.max_count < 1:
            raise AuxgenError(f"--max-count {self.max_count}: must be at least 1")
        size = DEFAULT_SHARD_SIZE if size is None else size
        if size < MIN_SHARD_SIZE:
            raise AuxgenError(f"--shard-size {self.shard_size}: must be at least {MIN_SHARD_SIZE // 1024}KiB")
        return replace(self, shard_size=size, generator_formats=gens)
