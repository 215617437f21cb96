"""Check 3, re-derivation: recompute a seeded sample of stored labels with the run's generator (and the
exported TorchScript generator, when there is one) and compare."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from auxgen.data import Data, apply_views
from auxgen.errors import AuxgenError
from auxgen.export.read import Export, manifest_path, numeric_problem
from auxgen.export.script import load_generator_script
from auxgen.run import LoadedRun
from auxgen.runtime import autocast
from auxgen.verify.result import CheckResult

REDERIVE_ATOL = {"float32": 1e-5, "float16": 1e-3}
@torch.inference_mode()
def soft_labels(run: LoadedRun, images: torch.Tensor, primary: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The generator's mask-softmax labels for uint8 images, float32 on the CPU."""
    if run.generator is None:
        raise AuxgenError(f"{run.run_dir} is a {run.cfg.method} run: it has no label generator")
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(run.device)
        y = primary[start:start + batch_size].to(run.device)
        with autocast(run.cfg.bf16, run.device):
            out.append(run.generator(x, y).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, run.hier.num_aux)


def check_rederivation(run: LoadedRun, data: Data, export: Export, sample: int = 512, seed: int = 0,
                       atol: float | None = None) -> CheckResult:
    """Recompute a seeded random sample of stored labels with the generator and compare."""
    if not export.readable:
        return CheckResult("rederivation", "fail", "the export's labels could not be read (see integrity)")
    if run.generator is None:
        return CheckResult("rederivation", "fail", f"the run ({run.cfg.method}) has no generator to re-derive with")
    bad_type = numeric_problem(export)
    if bad_type:
        return CheckResult("rederivation", "fail", bad_type)
    dtype = export.meta.get("dtype", "float32")
    atol = REDERIVE_ATOL.get(dtype, 1e-5) if atol is None else atol
    pad = int(export.meta.get("pad", data.pad))
    rows = [(name, i) for name in export.splits for i in range(len(export.splits[name].keys))]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(rows), size=min(sample, len(rows)), replace=False).tolist()) if rows else []
    worst, worst_key, n_bad, n_checked = 0.0, None, 0, 0
    for name, s in export.splits.items():
        sel = np.array([rows[c][1] for c in chosen if rows[c][0] == name], dtype=np.int64)
        if not len(sel):
            continue
        split = getattr(data, name)
        idx = torch.from_numpy(s.index[sel]).clamp(0, len(split) - 1)
        images, primary = split.images[idx], split.labels[idx]
        stored = torch.from_numpy(s.aux_soft[sel].astype(np.float32))
        if s.views is not None and stored.dim() == 3:
            views = torch.from_numpy(s.views[sel].astype(np.int64))
            fresh = torch.stack([soft_labels(run, apply_views(images, views[:, v], pad), primary)
                                 for v in range(views.shape[1])], dim=1)
        else:
            fresh = soft_labels(run, images, primary)
        if fresh.shape != stored.shape:
            return CheckResult("rederivation", "fail", f"/{name}: stored labels have shape {tuple(stored.shape)}, "
                               f"the generator gives {tuple(fresh.shape)}")
        diff = (fresh - stored).abs().nan_to_num(nan=float("inf")).flatten(1).max(1).values
        n_checked += len(sel)
        n_bad += int((diff > atol).sum())
        if len(diff) and float(diff.max()) > worst:
            worst, worst_key = float(diff.max()), s.keys[int(sel[int(diff.argmax())])]
    figures = {"sampled": n_checked, "seed": seed, "atol": atol, "dtype": dtype, "max_abs_diff": worst,
               "rows_over_atol": n_bad, "worst_key": worst_key}
    if n_checked == 0:
        return CheckResult("rederivation", "fail", "the export holds no samples", figures)
    script = _check_generator_script(run, data, export, chosen, rows, figures)
    if script:
        return CheckResult("rederivation", "fail", script, figures)
    if n_bad:
        return CheckResult("rederivation", "fail",
                           f"{n_bad} of {n_checked} sampled rows differ from the generator's labels by more than "
                           f"{atol:g} (max {worst:.3g}, e.g. {worst_key}): stale labels from another checkpoint, "
                           f"or edited ones", figures)
    also = (f"; the TorchScript generator gives the same labels (max diff {figures['script_max_abs_diff']:.2g})"
            if "script_max_abs_diff" in figures else "")
    return CheckResult("rederivation", "pass",
                       f"{n_checked} sampled rows (seed {seed}) re-derived within {atol:g} (max diff {worst:.2g})"
                       + also, figures)


def _check_generator_script(run: LoadedRun, data: Data, export: Export, chosen: list[int],
                            rows: list[tuple[str, int]], figures: dict[str, Any]) -> str | None:
    """The exported TorchScript generator (if the manifest lists one) against the run's, on the sampled images.

    Returns a failure reason, or None. Both run on the CPU in eval mode: they must agree exactly
    up to float rounding (1e-6), whatever the stored dtype.
    """
    name = (export.manifest or {}).get("generator")
    if not name:
        return None
    path = manifest_path(export.path).parent / name
    try:
        module, _ = load_generator_script(path)
    except Exception as e:  # a missing or damaged archive (integrity reports the hash)
        return f"the exported generator {path} cannot be loaded ({type(e).__name__})"
    idx_by_split: dict[str, list[int]] = {}
    for c in chosen:
        split, i = rows[c]
        idx_by_split.setdefault(split, []).append(int(export.splits[split].index[i]))
    worst = 0.0
    for split, idx in idx_by_split.items():
        src = getattr(data, split)
        t = torch.tensor(idx).clamp(0, len(src) - 1)
        images, primary = src.images[t], src.labels[t]
        with torch.inference_mode():
            theirs = torch.cat([module(images[i:i + 500], primary[i:i + 500]).float()
                                for i in range(0, len(t), 500)])
        ours = soft_labels(run, images, primary)
        worst = max(worst, float((theirs - ours).abs().nan_to_num(nan=float("inf")).max()))
    figures["script_max_abs_diff"] = worst
    if worst > 1e-6:
        return (f"the exported TorchScript generator {path.name} disagrees with the checkpoint's generator "
                f"(max diff {worst:.3g}): it belongs to another checkpoint or was edited")
    return None


