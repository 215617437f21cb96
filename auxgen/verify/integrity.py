"""Check 2, integrity: an export (HDF5 file, shard or parquet folder) against its manifest, docs/format.md and the
run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auxgen.checkpoint import sha256_file
from auxgen.data import Data
from auxgen.export.format import FORMAT_NAME, READABLE_VERSIONS, is_folder_kind, wds_key
from auxgen.export.generator_files import GENERATOR_FORMATS, generator_path
from auxgen.export.manifest import generator_entries
from auxgen.export.read import Export, ExportSplit, manifest_path, parquet_tables
from auxgen.paths import confined
from auxgen.run import LoadedRun
from auxgen.rundir import RunDir
from auxgen.verify.result import CheckResult, problems_reason

# How far a stored row may be from the value it stands for, per stored dtype. Storing rounds
# each value to half an ulp (float16: 2^-11 relative), so the sum of a row is off by about that
# much; re-derivation also absorbs float32 noise from different batch compositions.
SUM_TOL = {"float32": 1e-5, "float16": 4e-3}
ENTROPY_TOL = {"float32": 1e-4, "float16": 1e-2}


def check_integrity(run: LoadedRun, data: Data, export: Export) -> CheckResult:
    """Manifest hashes and sizes, run facts, shapes, blocks, sums, argmax, keys (docs/format.md)."""
    problems = whole_problems(export)
    _check_run_facts(export.manifest or {}, "manifest", run, problems)
    if export.attrs:
        a = export.attrs
        source = "HDF5" if export.kind == "hdf5" else "parquet"
        where = "HDF5 attribute" if export.kind == "hdf5" else "parquet metadata"
        if a.get("format") != FORMAT_NAME or a.get("format_version") not in READABLE_VERSIONS:
            problems.append(f"{source} format {'attribute ' if source == 'HDF5' else ''}{a.get('format')!r} "
                            f"v{a.get('format_version')}")
        _check_run_facts(a, where, run, problems)
        if "run_config" in a:
            try:
                if json.loads(a["run_config"]) != run.meta:
                    problems.append(f"{source} run_config differs from the run's config.json")
            except (TypeError, ValueError):
                problems.append(f"{source} run_config is not JSON")
    elif export.kind == "parquet" and export.readable:
        problems.append("the parquet tables carry no auxgen metadata")
    meta = export.meta
    dtype = meta.get("dtype", "float32")
    n_views, pad = meta.get("views") or 0, meta.get("pad", data.pad)
    counts = {}
    if not (isinstance(n_views, int) and n_views >= 0 and isinstance(pad, int)):
        problems.append(f"views {n_views!r} and pad {pad!r} are not counts")
    elif export.readable:
        psi = run.meta["psi"]
        lay = Layout(np.repeat(np.arange(len(psi)), psi), dtype, n_views, pad, export.version)
        for name, s in export.splits.items():
            counts[name] = len(s.keys)
            try:
                _check_split(name, s, getattr(data, name), lay, problems)
            except (ValueError, TypeError) as e:  # arrays of a type the format does not allow (strings, ...)
                problems.append(f"/{name} holds values of the wrong type ({type(e).__name__})")
        if pad != data.pad:
            problems.append(f"pad {pad} but the run's data uses {data.pad}")
    figures = {"kind": export.kind, "path": str(export.path), "files": export.files_checked, "counts": counts,
               "dtype": dtype, "views": n_views, "problems": len(problems)}
    if problems:
        return CheckResult("integrity", "fail", problems_reason(problems), figures)
    return CheckResult("integrity", "pass",
                       f"{export.files_checked} file(s) match the manifest; {sum(counts.values())} samples "
                       f"({', '.join(f'{k} {v}' for k, v in counts.items())}) consistent with the run, "
                       f"psi, blocks, sums and argmax", figures)


def whole_problems(export: Export) -> list[str]:
    """Why an export is not whole, whatever run it came from: unreadable files, files that do not match the
    manifest, files it does not list, counts it does not hold (the run-free part of check_integrity, which
    `auxgen report --labels` refuses on too)."""
    problems = list(export.problems)
    _check_manifest(export, problems)
    return problems


def _check_manifest(export: Export, problems: list[str]) -> None:
    """What the manifest claims beyond its files' sizes and hashes (read_export checked those)."""
    man = export.manifest
    if man is None:
        return
    if man.get("format") != FORMAT_NAME or man.get("format_version") not in READABLE_VERSIONS:
        problems.append(f"manifest format {man.get('format')!r} v{man.get('format_version')} is not "
                        f"{FORMAT_NAME} v{'/'.join(map(str, READABLE_VERSIONS))}")
    if export.attrs and export.attrs.get("format_version") != man.get("format_version"):
        problems.append(f"manifest format_version {man.get('format_version')} but the "
                        f"{'HDF5 file' if export.kind == 'hdf5' else 'parquet metadata'} says "
                        f"{export.attrs.get('format_version')}")
    if man.get("kind") != export.kind:
        problems.append(f"manifest kind {man.get('kind')!r} but {export.path} is {export.kind}")
    files = man.get("files") if isinstance(man.get("files"), list) else []
    root = (export.path if is_folder_kind(export.kind) else export.path.parent).resolve()
    listed = {(root / f["path"]).resolve() for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)}
    if is_folder_kind(export.kind):
        found = (sorted(p.name for p in export.path.glob("*.tar")) if export.kind == "wds"
                 else parquet_tables(export.path))
        what = "shards" if export.kind == "wds" else "tables"
        extra = [n for n in found if (export.path / n).resolve() not in listed]
        if extra:
            problems.append(f"{what} not in the manifest: {', '.join(extra)}")
    elif export.path.resolve() not in listed:
        problems.append(f"the manifest does not list {export.path.name}")
    problems += _generator_problems(export, man, listed)
    counts = man.get("counts")
    actual = {s: len(v.keys) for s, v in export.splits.items()}
    if export.readable and isinstance(counts, dict) and {k: v for k, v in counts.items() if v} != \
            {k: v for k, v in actual.items() if v}:
        problems.append(f"manifest counts {counts} but the export holds {actual}")


def _generator_problems(export: Export, man: dict[str, Any], listed: set[Path]) -> list[str]:
    """Generator entries must name listed files inside the export; a generator file beside it must be listed."""
    base = manifest_path(export.path).parent
    problems = []
    for g in generator_entries(man):
        path = confined(base, g["path"])
        if path is None or path.resolve() not in listed:
            problems.append(f"the manifest's generator {g['path'][:80]!r} is not one of its files inside the export "
                            f"(never loaded)")
    named = {q.resolve() for g in generator_entries(man) if (q := confined(base, g["path"])) is not None}
    # a parquet folder of either layout: `_generator.pt2`, or `generator.pt2` (written before the hive layout)
    kinds = {export.kind, "wds"} if export.kind == "parquet" else {export.kind}
    for p in (generator_path(export.path, k, fmt) for k in sorted(kinds) for fmt in GENERATOR_FORMATS):
        if os.path.lexists(p) and p.resolve() not in named:
            problems.append(f"{p.name} sits beside the export but the manifest does not list it; it was not loaded "
                            f"or checked: remove it, or export again")
    return problems


def _check_run_facts(meta: dict[str, Any], where: str, run: LoadedRun, problems: list[str]) -> None:
    if not meta:
        return
    for key, want in (("psi", run.meta["psi"]), ("num_primary", run.meta["num_primary"]),
                      ("num_aux", run.meta["num_aux"])):
        if key in meta and meta[key] != want:
            problems.append(f"{where} {key} {meta[key]} but the run has {want}")
        elif key not in meta:
            problems.append(f"{where} lacks {key}")
    ck = meta.get("checkpoint_sha256")
    if ck != run.checkpoint_sha256:
        hint = ""
        for name in ("best", "last"):
            p = RunDir(run.run_dir).checkpoint(name)
            if p.is_file() and p != run.checkpoint_path and sha256_file(p) == ck:
                hint = f"; it matches the run's {name} checkpoint: pass --checkpoint {name}"
        problems.append(f"{where} checkpoint_sha256 {str(ck)[:12]} is not the run's checkpoint "
                        f"{run.checkpoint_path.name} ({run.checkpoint_sha256[:12]}): labels of another "
                        f"checkpoint{hint}")
    if meta.get("config_sha256") != run.config_sha256:
        problems.append(f"{where} config_sha256 differs from the run's config.json")
    if meta.get("dataset_fingerprint") != run.meta["data"]["fingerprint"]:
        problems.append(f"{where} dataset_fingerprint differs from the run's dataset")


@dataclass(frozen=True)
class Layout:
    """What every split of an export must look like: its blocks, stored dtype, views and format version."""

    block_id: np.ndarray  # [K] the primary block of each auxiliary class
    dtype: str
    n_views: int
    pad: int
    version: Any


def _check_split(name: str, s: ExportSplit, split: Any, lay: Layout, problems: list[str]) -> None:
    """Each stage appends what it finds; one whose finding leaves the later stages meaningless stops them."""
    where = f"/{name}"
    for stage in (_shapes, _keys, _against_dataset, _probabilities):
        if not stage(where, s, split, lay, problems):
            return


def _shapes(where: str, s: ExportSplit, split: Any, lay: Layout, problems: list[str]) -> bool:
    n, k = len(s.keys), len(lay.block_id)
    shape = (n, lay.n_views, k) if lay.n_views else (n, k)
    if s.aux_soft.shape != shape:
        problems.append(f"{where} aux_soft has shape {s.aux_soft.shape}, expected {shape}")
        return False
    for field_name in ("aux_hard", "entropy"):
        if getattr(s, field_name).shape != shape[:-1]:
            problems.append(f"{where} {field_name} has shape {getattr(s, field_name).shape}, expected {shape[:-1]}")
            return False
    if s.index.shape != (n,) or s.primary.shape != (n,):
        problems.append(f"{where} index/primary have shapes {s.index.shape}/{s.primary.shape}, expected ({n},)")
        return False
    if str(s.aux_soft.dtype) != lay.dtype:
        problems.append(f"{where} aux_soft is {s.aux_soft.dtype}, the export says {lay.dtype}")
    return True


def _keys(where: str, s: ExportSplit, split: Any, lay: Layout, problems: list[str]) -> bool:
    n = len(s.keys)
    if len(set(s.keys)) != n:
        problems.append(f"{where} has {n - len(set(s.keys))} duplicate key(s)")
    if s.wds_keys is not None:
        rule = 1 if lay.version == 1 else 2
        bad = sum(w != wds_key(key, rule) for w, key in zip(s.wds_keys, s.keys, strict=True))
        if bad:
            problems.append(f"{where}: {bad} sample(s) whose __key__ is not their key escaped as format "
                            f"version {rule} says (docs/format.md)")
        if len(set(s.wds_keys)) != n:
            problems.append(f"{where} has {n - len(set(s.wds_keys))} duplicate __key__(s)")
    if len(set(s.index.tolist())) != n:
        problems.append(f"{where} has duplicate indices")
    if n and (s.index.min() < 0 or s.index.max() >= len(split)):
        problems.append(f"{where} index outside 0..{len(split) - 1}")
        return False
    return True


def _against_dataset(where: str, s: ExportSplit, split: Any, lay: Layout, problems: list[str]) -> bool:
    """Keys, primary labels, stored images and views against the run's own dataset."""
    idx, n = s.index, len(s.keys)
    wrong_key = sum(a != split.keys[i] for a, i in zip(s.keys, idx.tolist(), strict=True))
    if wrong_key:
        problems.append(f"{where}: {wrong_key} key(s) differ from the dataset's key at their index")
    wrong_primary = int((s.primary != split.labels.numpy()[idx]).sum())
    if wrong_primary:
        problems.append(f"{where}: {wrong_primary} primary label(s) differ from the dataset")
    if s.images is not None:
        ref = split.images.numpy()
        bad_img = sum(im is None or im.shape != ref[i].shape or not np.array_equal(im, ref[i])
                      for im, i in zip(s.images, idx.tolist(), strict=True))
        if bad_img:
            problems.append(f"{where}: {bad_img} stored image(s) differ from the dataset's")
    if s.views is not None or lay.n_views:
        if s.views is None or s.views.shape != (n, lay.n_views, 3):
            problems.append(f"{where} views missing or not of shape {(n, lay.n_views, 3)}")
        elif n and (s.views[..., :2].min() < 0 or s.views[..., :2].max() > 2 * lay.pad
                    or not np.isin(s.views[..., 2], (0, 1)).all()):
            problems.append(f"{where} views outside dy, dx in 0..{2 * lay.pad}, flip in 0/1")
    return True


def _probabilities(where: str, s: ExportSplit, split: Any, lay: Layout, problems: list[str]) -> bool:
    """Finite, non-negative, inside the primary's block, summing to 1; aux_hard an argmax; entropy right."""
    soft, block_id = s.aux_soft.astype(np.float64), lay.block_id
    finite = np.isfinite(soft).all(axis=-1)
    if not finite.all():
        problems.append(f"{where}: {int((~finite).sum())} row(s) with NaN or Inf")
    if not np.isfinite(s.entropy).all():
        problems.append(f"{where}: entropy has NaN or Inf")
    if not (0 <= s.primary).all() or not (s.primary < block_id.max() + 1).all():
        problems.append(f"{where} primary outside 0..{block_id.max()}")
        return False
    inside = block_id[None, :] == s.primary[:, None]           # [N, K]
    if lay.n_views:
        inside = np.broadcast_to(inside[:, None, :], soft.shape)
    outside_bad = ((soft != 0) & ~inside).any(axis=-1)
    if outside_bad.any():
        first = s.keys[int(np.argwhere(outside_bad)[0][0])]
        problems.append(f"{where}: {int(outside_bad.sum())} row(s) with mass outside their block (first {first})")
    if (soft < 0).any():
        problems.append(f"{where}: negative probabilities")
    tol = SUM_TOL.get(lay.dtype, 1e-5)
    off = np.abs(soft.sum(-1) - 1.0)
    if (off[finite] > tol).any():
        problems.append(f"{where}: {int((off[finite] > tol).sum())} row(s) do not sum to 1 "
                        f"(worst off by {off[finite].max():.2e}, tolerance {tol:g})")
    return _argmax_and_entropy(where, s, soft, finite, lay, problems)


def _argmax_and_entropy(where: str, s: ExportSplit, soft: np.ndarray, finite: np.ndarray, lay: Layout,
                        problems: list[str]) -> bool:
    hard = s.aux_hard.astype(np.int64)
    if hard.min(initial=0) < 0 or hard.max(initial=0) >= len(lay.block_id):
        problems.append(f"{where} aux_hard outside 0..{len(lay.block_id) - 1}")
        return False
    # aux_hard must be *an* argmax: rounding to float16 can tie values the exporter saw as distinct
    at_hard = np.take_along_axis(soft, hard[..., None], axis=-1)[..., 0]
    bad_hard = finite & (at_hard < soft.max(-1))
    if bad_hard.any():
        problems.append(f"{where}: {int(bad_hard.sum())} aux_hard value(s) are not the argmax of aux_soft")
    ent = -(soft * np.log(np.where(soft > 0, soft, 1.0))).sum(-1)
    bad_ent = finite & (np.abs(ent - s.entropy) > ENTROPY_TOL.get(lay.dtype, 1e-4))
    if bad_ent.any():
        problems.append(f"{where}: {int(bad_ent.sum())} entropy value(s) differ from that of aux_soft")
    return True
