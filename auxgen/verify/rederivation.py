"""Check 3, re-derivation: recompute a seeded sample of stored labels with the run's generator (and with every
exported generator file: .pt2, .onnx, TorchScript) and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from auxgen.data import Data, apply_views
from auxgen.errors import AuxgenError
from auxgen.export.baseline import EXPORTABLE, baseline_hard, one_hot_rows
from auxgen.export.generator_files import GENERATOR_ATOL, generator_max_diff
from auxgen.export.labels import compute_soft_labels
from auxgen.export.manifest import generator_entries
from auxgen.export.read import Export, manifest_path, numeric_problem
from auxgen.paths import confined
from auxgen.run import LoadedRun
from auxgen.verify.result import CheckResult

REDERIVE_ATOL = {"float32": 1e-5, "float16": 1e-3}
def soft_labels(run: LoadedRun, images: torch.Tensor, primary: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The generator's mask-softmax labels for uint8 images, float32 on the CPU, computed as the exporter does."""
    if run.generator is None:
        raise AuxgenError(f"{run.run_dir} is a {run.cfg.method} run: it has no label generator")
    return compute_soft_labels(run.generator, images, primary, run.device, batch_size)


def check_rederivation(run: LoadedRun, data: Data, export: Export, sample: int = 512, seed: int = 0,
                       atol: float | None = None, load_generators: bool = True) -> CheckResult:
    """Recompute a seeded random sample of stored labels with the generator and compare.

    With load_generators=False (integrity failed) the exported generator files are not loaded at all:
    a file that does not match its manifest, or sits beside it unlisted, may be anyone's.
    """
    problem = _cannot_rederive(run, export)
    if problem:
        return CheckResult("rederivation", "fail", problem)
    dtype = export.meta.get("dtype", "float32")
    atol = REDERIVE_ATOL.get(dtype, 1e-5) if atol is None else atol
    rows = [(name, i) for name in export.splits for i in range(len(export.splits[name].keys))]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(rows), size=min(sample, len(rows)), replace=False).tolist()) if rows else []
    try:
        tally = _compare_sample(run, data, export, chosen, rows, atol)
    except AuxgenError as e:
        return CheckResult("rederivation", "fail", str(e))
    figures = {"sampled": tally.checked, "seed": seed, "atol": atol, "dtype": dtype, "max_abs_diff": tally.worst,
               "rows_over_atol": tally.bad, "worst_key": tally.worst_key}
    if tally.checked == 0:
        return CheckResult("rederivation", "fail", "the export holds no samples", figures)
    gen_problem = _generator_files_problem(run, data, export, chosen, rows, figures, load_generators)
    if gen_problem:
        return CheckResult("rederivation", "fail", gen_problem, figures)
    if tally.bad:
        against = "the generator's labels" if run.generator is not None else f"the run's {run.cfg.method} targets"
        return CheckResult("rederivation", "fail",
                           f"{tally.bad} of {tally.checked} sampled rows differ from {against} by more than "
                           f"{atol:g} (max {tally.worst:.3g}, e.g. {tally.worst_key}): stale labels from another "
                           f"checkpoint, or edited ones", figures)
    gens = figures.get("generator_files", {})
    also = ("; the exported generator files give the same labels ("
            + ", ".join(f"{g['format']} max diff {g['max_abs_diff']:.2g}" for g in gens.values()) + ")"
            if gens else "")
    return CheckResult("rederivation", "pass",
                       f"{tally.checked} sampled rows (seed {seed}) re-derived within {atol:g} (max diff "
                       f"{tally.worst:.2g})" + also, figures)


def _cannot_rederive(run: LoadedRun, export: Export) -> str | None:
    """Why the export's labels cannot be re-derived at all (None when they can)."""
    if not export.readable:
        return "the export's labels could not be read (see integrity)"
    if run.generator is None and run.cfg.method not in EXPORTABLE:
        return f"the run ({run.cfg.method}) has no generator to re-derive with"
    return numeric_problem(export)


class _Tally(NamedTuple):
    checked: int
    bad: int                 # rows whose largest difference is over atol
    worst: float
    worst_key: str | None


def _compare_sample(run: LoadedRun, data: Data, export: Export, chosen: list[int], rows: list[tuple[str, int]],
                    atol: float) -> _Tally:
    """The chosen rows' stored labels against fresh ones, split by split; AuxgenError where they cannot be
    compared (a baseline's targets that cannot be had, labels of another shape)."""
    pad = int(export.meta.get("pad", data.pad))
    worst, worst_key, n_bad, n_checked = 0.0, None, 0, 0
    targets: dict[str, np.ndarray] = {}  # a baseline run's targets of each split, recomputed once
    for name, s in export.splits.items():
        sel = np.array([rows[c][1] for c in chosen if rows[c][0] == name], dtype=np.int64)
        if not len(sel):
            continue
        stored = torch.from_numpy(s.aux_soft[sel].astype(np.float32))
        fresh = _fresh_labels(run, data, name, s, sel, pad, targets)
        if fresh.shape != stored.shape:
            raise AuxgenError(f"/{name}: stored labels have shape {tuple(stored.shape)}, the generator gives "
                              f"{tuple(fresh.shape)}")
        diff = (fresh - stored).abs().nan_to_num(nan=float("inf")).flatten(1).max(1).values
        n_checked += len(sel)
        n_bad += int((diff > atol).sum())
        if len(diff) and float(diff.max()) > worst:
            worst, worst_key = float(diff.max()), s.keys[int(sel[int(diff.argmax())])]
    return _Tally(n_checked, n_bad, worst, worst_key)


def _generator_files_problem(run: LoadedRun, data: Data, export: Export, chosen: list[int],
                             rows: list[tuple[str, int]], figures: dict[str, Any], load: bool) -> str | None:
    """Why the export's generator files do not vouch for its labels (None when they do, or there are none)."""
    listed = bool(generator_entries(export.manifest or {}))
    if run.generator is None:  # a random or human run: its fixed targets, recomputed (auxgen.export.baseline)
        return (f"a {run.cfg.method} run has no generator, but the manifest lists generator files; not loaded"
                if listed else None)
    if load:
        return _check_generator_files(run, data, export, chosen, rows, figures)
    return ("the exported generator files were not loaded: integrity failed, so none of them is vouched for"
            if listed else None)


def _fresh_labels(run: LoadedRun, data: Data, name: str, s: Any, sel: np.ndarray, pad: int,
                  targets: dict[str, np.ndarray]) -> torch.Tensor:
    """What the rows `sel` of split `name` should hold: the generator's labels of their images (of each
    stored view), or a baseline run's targets; raises AuxgenError where a baseline's targets cannot be had."""
    split = getattr(data, name)
    idx = torch.from_numpy(s.index[sel]).clamp(0, len(split) - 1)
    images, primary = split.images[idx], split.labels[idx]
    per_view = s.aux_soft.ndim == 3
    if run.generator is None:
        if name not in targets:
            targets[name] = baseline_hard(run, data, name)
        fresh = torch.from_numpy(one_hot_rows(targets[name][idx.numpy()], run.hier.num_aux))
        # every view of a sample carries the sample's label
        return fresh[:, None, :].expand(-1, s.aux_soft.shape[1], -1) if per_view else fresh
    if s.views is not None and per_view:
        views = torch.from_numpy(s.views[sel].astype(np.int64))
        return torch.stack([soft_labels(run, apply_views(images, views[:, v], pad), primary)
                            for v in range(views.shape[1])], dim=1)
    return soft_labels(run, images, primary)


def _generator_files(export: Export) -> tuple[list[tuple[Path, str, str]], str | None]:
    """(path, format, sha256) of each generator file the manifest lists, inside the export and listed with a hash
    among its files; or why one cannot be loaded. Files the manifest does not list are never loaded
    (integrity reports them): a file made by someone else is only run once its manifest vouches for it."""
    base = manifest_path(export.path).parent
    man = export.manifest or {}
    hashes = {f.get("path"): f.get("sha256") for f in man.get("files") or [] if isinstance(f, dict)}
    found = []
    for g in generator_entries(man):
        path = confined(base, g["path"])
        if path is None:
            return [], f"the manifest names a generator {g['path'][:80]!r} outside the export; not loaded"
        if not isinstance(hashes.get(g["path"]), str):
            return [], f"the manifest names a generator {g['path']} without listing its sha256; not loaded"
        found.append((path, g["format"], hashes[g["path"]]))
    return found, None


def _check_generator_files(run: LoadedRun, data: Data, export: Export, chosen: list[int],
                           rows: list[tuple[str, int]], figures: dict[str, Any]) -> str | None:
    """Every exported generator file against the checkpoint's generator, on the sampled images.

    Returns a failure reason, or None. All run on the CPU in eval mode, with the same batches: each
    must agree within GENERATOR_ATOL of its format (pt2, TorchScript: float rounding; ONNX:
    onnxruntime's kernels), whatever the stored dtype, and give exact zeros outside the block.
    """
    files, problem = _generator_files(export)
    if problem or not files:
        return problem
    images_by_split: dict[str, list[int]] = {}
    for c in chosen:
        split, i = rows[c]
        images_by_split.setdefault(split, []).append(int(export.splits[split].index[i]))
    batches = []
    for split, idx in images_by_split.items():
        src = getattr(data, split)
        t = torch.tensor(idx).clamp(0, len(src) - 1)
        batches.append((src.images[t], src.labels[t]))
    results: dict[str, dict[str, Any]] = {}
    figures["generator_files"] = results
    for path, fmt, sha in files:
        if fmt not in GENERATOR_ATOL:
            return f"the manifest names a generator {path.name} of unknown format {fmt!r}"
        try:
            diffs = [generator_max_diff(run.generator, path, fmt, x, y, sha256=sha)  # type: ignore[arg-type]
                     for x, y in batches]
        except AuxgenError as e:  # refused before loading: a hash mismatch, an archive that could run code
            return str(e)
        except Exception as e:  # a missing or damaged file (integrity reports its hash)
            return f"the exported {fmt} generator {path} cannot be loaded or run ({type(e).__name__})"
        if any(d is None for d in diffs):
            return (f"the exported {fmt} generator {path.name} gives labels that are not exact zeros outside the "
                    f"primary class's block")
        worst = max([d for d in diffs if d is not None], default=0.0)
        results[path.name] = {"format": fmt, "max_abs_diff": worst, "atol": GENERATOR_ATOL[fmt]}
        if not worst <= GENERATOR_ATOL[fmt]:
            return (f"the exported {fmt} generator {path.name} disagrees with the checkpoint's generator "
                    f"(max diff {worst:.3g}, allowed {GENERATOR_ATOL[fmt]:g}): it belongs to another checkpoint "
                    f"or was edited")
    return None
