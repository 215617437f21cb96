"""`auxgen verify` as plain functions: each check returns a `CheckResult` with figures and a reason.

1. evaluation   re-run the primary-task test evaluation of a checkpoint and compare it with the
                accuracy the run recorded (exact on the same device and dtype);
2. integrity    an export (HDF5 file or shard folder) against its manifest, docs/format.md and the run;
3. rederivation recompute a seeded sample of labels with the run's generator;
4. quality      retrain a fresh network on the frozen labels next to a single-task one (optional).

Nothing here writes anywhere: the run and the export are only read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from auxgen.checkpoint import sha256_file
from auxgen.data import Data, apply_views
from auxgen.errors import AuxgenError
from auxgen.export.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HDF5_MANIFEST_SUFFIX,
    MANIFEST_NAME,
    SPLITS,
    wds_key,
)
from auxgen.export.script import load_generator_script
from auxgen.run import LoadedRun, load_run, load_run_data, read_run_config
from auxgen.runtime import autocast
from auxgen.trainer import TargetSource, evaluate, train

# How far a stored row may be from the value it stands for, per stored dtype. Storing rounds
# each value to half an ulp (float16: 2^-11 relative), so the sum of a row is off by about that
# much; re-derivation also absorbs float32 noise from different batch compositions.
SUM_TOL = {"float32": 1e-5, "float16": 4e-3}
REDERIVE_ATOL = {"float32": 1e-5, "float16": 1e-3}
ENTROPY_TOL = {"float32": 1e-4, "float16": 1e-2}
MAX_LISTED = 8  # problems spelled out in a reason; the count says how many more


@dataclass
class CheckResult:
    """One check: status is pass, fail or skip; figures are the numbers behind the reason."""

    name: str
    status: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class Report:
    run_dir: str
    checkpoint: str
    labels: str | None
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "checkpoint": self.checkpoint, "labels": self.labels,
                "passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def _problems_reason(problems: list[str]) -> str:
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return "; ".join(problems[:MAX_LISTED]) + more


# ------------------------------------------------------------------------------ 1. evaluation
def check_evaluation(run: LoadedRun, data: Data, tolerance: float = 0.0) -> CheckResult:
    """Evaluate the checkpoint on the test split exactly as training did and compare."""
    cfg = run.cfg
    recorded = run.recorded_test_acc()
    ev = evaluate(run.model, data.test, run.device, cfg.eval_batch_size, cfg.gamma, cfg.bf16)
    recorded_data = run.meta.get("data", {})
    now = {"fingerprint": data.fingerprint(), "train_fingerprint": data.split_fingerprint("train"),
           "test_fingerprint": data.split_fingerprint("test")}
    changed = [k for k, v in now.items() if recorded_data.get(k) != v]
    problems = []
    if run.state.get("data_fingerprint") not in (None, recorded_data.get("fingerprint")):
        problems.append("the checkpoint records a different dataset fingerprint than config.json "
                        "(the checkpoint comes from another run)")
    history_acc = _history_acc(run)
    if history_acc is not None and recorded is not None and history_acc != recorded:
        problems.append(f"metrics.jsonl records test_acc {history_acc:.6f} for epoch {run.state.get('epoch')} "
                        f"but the checkpoint says {recorded:.6f}")
    figures = {"recorded_acc": recorded, "acc": ev["acc"], "loss": ev["loss"], "n": ev["n"],
               "diff": None if recorded is None else ev["acc"] - recorded, "tolerance": tolerance,
               "epoch": run.state.get("epoch"), "device": str(run.device), "run_device": run.meta.get("device"),
               "changed_fingerprints": changed, "checkpoint_sha256": run.checkpoint_sha256}
    if recorded is None:
        problems.append("the checkpoint records no test accuracy")
    elif abs(ev["acc"] - recorded) > tolerance:
        why = (f"the data changed ({', '.join(changed)} differ)" if changed else
               "all recorded data fingerprints match, so the checkpoint weights or the code changed")
        problems.append(f"test accuracy {ev['acc']:.6f} != recorded {recorded:.6f} "
                        f"(diff {ev['acc'] - recorded:+.6f}, tolerance {tolerance}): {why}")
    if changed and not any("fingerprints" in p or "data changed" in p for p in problems):
        problems.append(f"the dataset changed since training: {', '.join(changed)} differ from config.json")
    if str(run.device) != str(run.meta.get("device")) and tolerance == 0.0 and problems:
        problems.append(f"note: evaluated on {run.device} but trained on {run.meta.get('device')}; "
                        f"other devices may need --tolerance")
    if problems:
        return CheckResult("evaluation", "fail", _problems_reason(problems), figures)
    return CheckResult("evaluation", "pass",
                       f"test accuracy {ev['acc']:.6f} equals the recorded {recorded:.6f} "
                       f"(epoch {run.state.get('epoch')}, {ev['n']} test samples)", figures)


def _history_acc(run: LoadedRun) -> float | None:
    path = run.run_dir / "metrics.jsonl"
    epoch = run.state.get("epoch")
    if not path.is_file() or epoch is None:
        return None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch") == epoch:
            return row.get("test_acc")
    return None


# ------------------------------------------------------------------------------ reading an export
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
    wds_keys: list[str] | None = None


@dataclass
class Export:
    """An export read back: what the files hold, and what went wrong reading them."""

    path: Path
    kind: str                      # hdf5 or wds
    manifest: dict[str, Any] | None
    attrs: dict[str, Any]          # HDF5 file attributes (empty for shards)
    splits: dict[str, ExportSplit]
    problems: list[str]
    readable: bool                 # the label arrays could be read at all

    @property
    def meta(self) -> dict[str, Any]:
        """Format facts from the HDF5 attributes, else from the manifest."""
        return self.attrs or self.manifest or {}


def manifest_path(path: Path) -> Path:
    return path / MANIFEST_NAME if path.is_dir() else path.with_name(path.name + HDF5_MANIFEST_SUFFIX)


def read_export(path: str | Path) -> Export:
    """Read an HDF5 export or a shard folder; damage becomes problems, never exceptions."""
    path = Path(path)
    if not path.exists():
        raise AuxgenError(f"--labels {path} does not exist")
    kind = "wds" if path.is_dir() else "hdf5"
    problems: list[str] = []
    manifest = None
    mpath = manifest_path(path)
    if not mpath.is_file():
        problems.append(f"no manifest ({mpath} is missing)")
    else:
        try:
            manifest = json.loads(mpath.read_text())
            if not isinstance(manifest, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            problems.append(f"manifest {mpath} is not a JSON object")
            manifest = None
    if kind == "hdf5":
        attrs, splits, readable = _read_hdf5(path, problems)
    else:
        attrs, readable = {}, True
        splits = _read_shards(path, manifest, problems)
    return Export(path, kind, manifest, attrs, splits, problems, readable and bool(splits))


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
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
                if name not in SPLITS:
                    problems.append(f"unexpected group /{name}")
                    continue
                g = f[name]
                missing = [d for d in ("keys", "index", "primary", "aux_soft", "aux_hard", "entropy") if d not in g]
                if missing:
                    problems.append(f"/{name} lacks {', '.join(missing)}")
                    continue
                keys = [k.decode() if isinstance(k, bytes) else str(k) for k in g["keys"][()]]
                splits[name] = ExportSplit(keys, g["index"][()], g["primary"][()], g["aux_soft"][()],
                                           g["aux_hard"][()], g["entropy"][()],
                                           g["views"][()] if "views" in g else None)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        problems.append(f"{path} cannot be read as HDF5 (truncated or damaged?): {str(e).splitlines()[0][:120]}")
        return {}, {}, False
    return attrs, splits, True


_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's own key/extension split
_SHARD = re.compile(r"^(train|test)-\d{6}\.tar$")


def _read_shards(folder: Path, manifest: dict | None, problems: list[str]) -> dict[str, ExportSplit]:
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
        samples: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(folder / name, "r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    km = _MEMBER.match(member.name)
                    if not km:
                        problems.append(f"{name}: member {member.name} has no extension")
                        continue
                    fh = tar.extractfile(member)
                    samples.setdefault(km.group(1), {})[km.group(2)] = fh.read() if fh else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            problems.append(f"{name} is not a readable tar file: {e}")
            continue
        for wkey, files in samples.items():
            missing = [e for e in ("cls", "aux.npy", "json") if e not in files]
            if missing:
                problems.append(f"{name}: sample {wkey} lacks {', '.join(missing)}")
                continue
            try:
                meta = json.loads(files["json"])
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
                                               "image": image, "shard": name})
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
                       if all("views" in r["meta"] for r in rs) and rs and "views" in rs[0]["meta"] else None),
                images=[r["image"] for r in rs] if any(r["image"] is not None for r in rs) else None,
                wds_keys=[r["wkey"] for r in rs])
        except (ValueError, TypeError) as e:
            problems.append(f"split {split}: samples disagree in shape or type ({e})")
    return splits


# ------------------------------------------------------------------------------ 2. integrity
def _check_manifest(export: Export, run: LoadedRun, problems: list[str]) -> int:
    """Files, hashes and run facts of the manifest; returns how many files were hashed."""
    man = export.manifest
    if man is None:
        return 0
    root = export.path if export.kind == "wds" else export.path.parent
    if man.get("format") != FORMAT_NAME or man.get("format_version") != FORMAT_VERSION:
        problems.append(f"manifest format {man.get('format')!r} v{man.get('format_version')} is not "
                        f"{FORMAT_NAME} v{FORMAT_VERSION}")
    if man.get("kind") != export.kind:
        problems.append(f"manifest kind {man.get('kind')!r} but {export.path} is {export.kind}")
    files = man.get("files")
    if not isinstance(files, list) or not files:
        problems.append("manifest lists no files")
        return 0
    listed = set()
    for entry in files:
        rel = str(entry.get("path", "")) if isinstance(entry, dict) else ""
        target = (root / rel).resolve()
        if not rel or root.resolve() not in target.parents:
            problems.append(f"manifest entry {entry!r} does not name a file inside {root}")
            continue
        listed.add(target)
        if not target.is_file():
            problems.append(f"{rel} is listed in the manifest but missing")
            continue
        size = target.stat().st_size
        if size != entry.get("bytes"):
            problems.append(f"{rel} has {size} bytes, manifest says {entry.get('bytes')}")
        if sha256_file(target) != entry.get("sha256"):
            problems.append(f"{rel} sha256 differs from the manifest (the file was changed or damaged)")
    if export.kind == "wds":
        extra = sorted(p.name for p in export.path.glob("*.tar") if p.resolve() not in listed)
        if extra:
            problems.append(f"shards not in the manifest: {', '.join(extra)}")
    elif export.path.resolve() not in listed:
        problems.append(f"the manifest does not list {export.path.name}")
    counts = man.get("counts")
    actual = {s: len(v.keys) for s, v in export.splits.items()}
    if export.readable and isinstance(counts, dict) and {k: v for k, v in counts.items() if v} != \
            {k: v for k, v in actual.items() if v}:
        problems.append(f"manifest counts {counts} but the export holds {actual}")
    return len(files)


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
            p = run.run_dir / "checkpoints" / f"{name}.pt"
            if p.is_file() and p != run.checkpoint_path and sha256_file(p) == ck:
                hint = f"; it matches the run's {name} checkpoint: pass --checkpoint {name}"
        problems.append(f"{where} checkpoint_sha256 {str(ck)[:12]} is not the run's checkpoint "
                        f"{run.checkpoint_path.name} ({run.checkpoint_sha256[:12]}): labels of another "
                        f"checkpoint{hint}")
    if meta.get("config_sha256") != run.config_sha256:
        problems.append(f"{where} config_sha256 differs from the run's config.json")
    if meta.get("dataset_fingerprint") != run.meta["data"]["fingerprint"]:
        problems.append(f"{where} dataset_fingerprint differs from the run's dataset")


def check_integrity(run: LoadedRun, data: Data, export: Export) -> CheckResult:
    """Manifest hashes and sizes, run facts, shapes, blocks, sums, argmax, keys (docs/format.md)."""
    problems = list(export.problems)
    n_files = _check_manifest(export, run, problems)
    _check_run_facts(export.manifest or {}, "manifest", run, problems)
    if export.attrs:
        a = export.attrs
        if a.get("format") != FORMAT_NAME or a.get("format_version") != FORMAT_VERSION:
            problems.append(f"HDF5 format attribute {a.get('format')!r} v{a.get('format_version')}")
        _check_run_facts(a, "HDF5 attribute", run, problems)
        if "run_config" in a:
            try:
                if json.loads(a["run_config"]) != run.meta:
                    problems.append("HDF5 run_config differs from the run's config.json")
            except (TypeError, ValueError):
                problems.append("HDF5 run_config is not JSON")
    meta = export.meta
    dtype = meta.get("dtype", "float32")
    n_views = int(meta.get("views") or 0)
    counts = {}
    if export.readable:
        psi = run.meta["psi"]
        block_id = np.repeat(np.arange(len(psi)), psi)
        for name, s in export.splits.items():
            counts[name] = len(s.keys)
            _check_split(name, s, getattr(data, name), block_id, dtype, n_views, int(meta.get("pad", data.pad)),
                         problems)
        if "pad" in meta and meta["pad"] != data.pad:
            problems.append(f"pad {meta['pad']} but the run's data uses {data.pad}")
    figures = {"kind": export.kind, "path": str(export.path), "files": n_files, "counts": counts,
               "dtype": dtype, "views": n_views, "problems": len(problems)}
    if problems:
        return CheckResult("integrity", "fail", _problems_reason(problems), figures)
    return CheckResult("integrity", "pass",
                       f"{n_files} file(s) match the manifest; {sum(counts.values())} samples "
                       f"({', '.join(f'{k} {v}' for k, v in counts.items())}) consistent with the run, "
                       f"psi, blocks, sums and argmax", figures)


def _check_split(name: str, s: ExportSplit, split: Any, block_id: np.ndarray, dtype: str, n_views: int,
                 pad: int, problems: list[str]) -> None:
    n, k = len(s.keys), len(block_id)
    where = f"/{name}"
    shape = (n, n_views, k) if n_views else (n, k)
    if s.aux_soft.shape != shape:
        problems.append(f"{where} aux_soft has shape {s.aux_soft.shape}, expected {shape}")
        return
    lead = shape[:-1]
    for field_name in ("aux_hard", "entropy"):
        if getattr(s, field_name).shape != lead:
            problems.append(f"{where} {field_name} has shape {getattr(s, field_name).shape}, expected {lead}")
            return
    if s.index.shape != (n,) or s.primary.shape != (n,):
        problems.append(f"{where} index/primary have shapes {s.index.shape}/{s.primary.shape}, expected ({n},)")
        return
    if str(s.aux_soft.dtype) != dtype:
        problems.append(f"{where} aux_soft is {s.aux_soft.dtype}, the export says {dtype}")
    if len(set(s.keys)) != n:
        problems.append(f"{where} has {n - len(set(s.keys))} duplicate key(s)")
    if s.wds_keys is not None:
        bad = sum(w != wds_key(key) for w, key in zip(s.wds_keys, s.keys, strict=True))
        if bad:
            problems.append(f"{where}: {bad} sample(s) whose __key__ is not their key with '.' -> '_'")
    if len(set(s.index.tolist())) != n:
        problems.append(f"{where} has duplicate indices")
    if n and (s.index.min() < 0 or s.index.max() >= len(split)):
        problems.append(f"{where} index outside 0..{len(split) - 1}")
        return
    idx = s.index
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
    if s.views is not None or n_views:
        if s.views is None or s.views.shape != (n, n_views, 3):
            problems.append(f"{where} views missing or not of shape {(n, n_views, 3)}")
        elif n and (s.views[..., :2].min() < 0 or s.views[..., :2].max() > 2 * pad
                    or not np.isin(s.views[..., 2], (0, 1)).all()):
            problems.append(f"{where} views outside dy, dx in 0..{2 * pad}, flip in 0/1")
    soft = s.aux_soft.astype(np.float64)
    finite = np.isfinite(soft).all(axis=-1)
    if not finite.all():
        problems.append(f"{where}: {int((~finite).sum())} row(s) with NaN or Inf")
    if not np.isfinite(s.entropy).all():
        problems.append(f"{where}: entropy has NaN or Inf")
    if not (0 <= s.primary).all() or not (s.primary < block_id.max() + 1).all():
        problems.append(f"{where} primary outside 0..{block_id.max()}")
        return
    inside = block_id[None, :] == s.primary[:, None]           # [N, K]
    if n_views:
        inside = np.broadcast_to(inside[:, None, :], soft.shape)
    outside_bad = ((soft != 0) & ~inside).any(axis=-1)
    if outside_bad.any():
        first = s.keys[int(np.argwhere(outside_bad)[0][0])]
        problems.append(f"{where}: {int(outside_bad.sum())} row(s) with mass outside their block (first {first})")
    if (soft < 0).any():
        problems.append(f"{where}: negative probabilities")
    tol = SUM_TOL.get(dtype, 1e-5)
    off = np.abs(soft.sum(-1) - 1.0)
    if (off[finite] > tol).any():
        problems.append(f"{where}: {int((off[finite] > tol).sum())} row(s) do not sum to 1 "
                        f"(worst off by {off[finite].max():.2e}, tolerance {tol:g})")
    hard = s.aux_hard.astype(np.int64)
    if hard.min(initial=0) < 0 or hard.max(initial=0) >= len(block_id):
        problems.append(f"{where} aux_hard outside 0..{len(block_id) - 1}")
        return
    # aux_hard must be *an* argmax: rounding to float16 can tie values the exporter saw as distinct
    at_hard = np.take_along_axis(soft, hard[..., None], axis=-1)[..., 0]
    bad_hard = finite & (at_hard < soft.max(-1))
    if bad_hard.any():
        problems.append(f"{where}: {int(bad_hard.sum())} aux_hard value(s) are not the argmax of aux_soft")
    ent = -(soft * np.log(np.where(soft > 0, soft, 1.0))).sum(-1)
    etol = ENTROPY_TOL.get(dtype, 1e-4)
    bad_ent = finite & (np.abs(ent - s.entropy) > etol)
    if bad_ent.any():
        problems.append(f"{where}: {int(bad_ent.sum())} entropy value(s) differ from that of aux_soft")


# ------------------------------------------------------------------------------ 3. re-derivation
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


# ------------------------------------------------------------------------------ 4. label quality
def retrain(run: LoadedRun, data: Data, train_index: torch.Tensor, targets: torch.Tensor | None,
            epochs: int, seed: int, views: torch.Tensor | None = None) -> dict[str, Any]:
    """Train a fresh multi-task network on frozen targets (None: single-task) through the trainer.

    `targets` [N, K] (or [N, V, K] with `views` [N, V, 3]) are the labels of the training rows
    `train_index`; the trainer's one loop, schedule and precision policy do the rest.
    """
    n = len(data.train)
    if targets is None:
        source = TargetSource("none")
    else:
        full = torch.zeros((n, *targets.shape[1:]), dtype=torch.float32)
        full[train_index] = targets.float()
        full_views = None
        if views is not None:
            full_views = torch.zeros((n, *views.shape[1:]), dtype=torch.long)
            full_views[train_index] = views.long()
        source = TargetSource("soft", full, full_views)
    cfg = dataclasses.replace(run.cfg, method="single", epochs=epochs, seed=seed, meta_split=0.0,
                              fused_lookahead=False)
    if len(train_index) < cfg.batch_size:
        raise AuxgenError(f"the export holds {len(train_index)} training samples, fewer than one batch "
                          f"({cfg.batch_size})")
    s = train(cfg, None, show=False, data=data, targets=source, train_idx=train_index)
    return {"acc": s["final_test_acc"], "best_acc": max(s["history"]), "history": s["history"]}


def check_quality(run: LoadedRun, data: Data, export: Export, epochs: int, seed: int | None = None,
                  baseline: str | None = None, min_gain: float | None = None) -> CheckResult:
    """Frozen exported labels vs single-task (and random labels of the same psi), same seed and schedule."""
    if not export.readable or "train" not in export.splits:
        return CheckResult("quality", "fail", "needs the export's train split (export with --split all or train)")
    seed = run.cfg.seed if seed is None else seed
    s = export.splits["train"]
    train_index = torch.from_numpy(s.index.astype(np.int64))
    if len(train_index) and (int(train_index.min()) < 0 or int(train_index.max()) >= len(data.train)):
        return CheckResult("quality", "fail", "the export's train indices do not fit the dataset (see integrity)")
    soft = torch.from_numpy(s.aux_soft.astype(np.float32))
    views = torch.from_numpy(s.views.astype(np.int64)) if s.views is not None and soft.dim() == 3 else None
    if views is None and soft.dim() == 3:
        soft = soft[:, 0]
    results = {"exported": retrain(run, data, train_index, soft, epochs, seed, views),
               "single": retrain(run, data, train_index, None, epochs, seed, views)}
    if baseline == "random":
        g = torch.Generator().manual_seed(seed + 1)
        y = data.train.labels[train_index]
        psi = torch.tensor(run.hier.psi)
        pick = torch.tensor(run.hier.offsets)[y] + (torch.rand(len(y), generator=g) * psi[y]).long()
        rand = F.one_hot(pick, run.hier.num_aux).float()
        if views is not None:
            rand = rand[:, None].expand(-1, views.shape[1], -1)
        results["random"] = retrain(run, data, train_index, rand, epochs, seed, views)
    gain = results["exported"]["acc"] - results["single"]["acc"]
    figures = {"epochs": epochs, "seed": seed, "backbone": run.cfg.backbone, "n_train": len(train_index),
               "acc_exported": results["exported"]["acc"], "acc_single": results["single"]["acc"],
               "gain": gain, "history": {k: v["history"] for k, v in results.items()}}
    reason = (f"frozen labels {100 * results['exported']['acc']:.2f}% vs single-task "
              f"{100 * results['single']['acc']:.2f}% ({100 * gain:+.2f} points)")
    if "random" in results:
        figures["acc_random"] = results["random"]["acc"]
        figures["gain_random"] = results["random"]["acc"] - results["single"]["acc"]
        reason += f"; random labels {100 * results['random']['acc']:.2f}%"
    reason += f"; {epochs} epochs, seed {seed}, {run.cfg.backbone}"
    if not all(math.isfinite(v["acc"]) for v in results.values()):
        return CheckResult("quality", "fail", "retraining gave no finite accuracy", figures)
    if min_gain is not None and gain < min_gain:
        figures["min_gain"] = min_gain
        return CheckResult("quality", "fail", reason + f": gain below the required {100 * min_gain:+.2f}", figures)
    return CheckResult("quality", "pass", reason, figures)


# ------------------------------------------------------------------------------ all together
def verify(run_dir: str | Path, labels: str | Path | None = None, checkpoint: str = "best",
           tolerance: float = 0.0, sample: int = 512, seed: int = 0, atol: float | None = None,
           retrain_epochs: int = 0, baseline: str | None = None, min_gain: float | None = None,
           device: str | None = None, data_root: str | None = None) -> Report:
    """Run every applicable check. Bad usage raises AuxgenError; failures are results."""
    run_dir = Path(run_dir)
    read_run_config(run_dir)  # not a run directory: bad usage
    if sample < 1:
        raise AuxgenError("--sample must be at least 1")
    if retrain_epochs < 0:
        raise AuxgenError("--retrain must be a number of epochs (>= 1)")
    if baseline not in (None, "random"):
        raise AuxgenError(f"--baseline {baseline!r}: only 'random' is available")
    if baseline and not retrain_epochs:
        raise AuxgenError("--baseline needs --retrain EPOCHS")
    if retrain_epochs and labels is None:
        raise AuxgenError("--retrain needs --labels (the export to retrain on)")
    if tolerance < 0:
        raise AuxgenError("--tolerance must be >= 0")
    export = read_export(labels) if labels is not None else None
    report = Report(str(run_dir), checkpoint, None if labels is None else str(labels), [])
    try:
        run = load_run(run_dir, checkpoint, device=device, data_root=data_root)
    except AuxgenError as e:
        if "does not exist" in str(e) and checkpoint not in ("best", "last"):
            raise
        # a damaged checkpoint fails verification; the other checks need it and cannot run
        report.checks.append(CheckResult("evaluation", "fail", f"the run cannot be loaded: {e}"))
        for name in (["integrity", "rederivation"] if export else []) + (["quality"] if retrain_epochs else []):
            report.checks.append(CheckResult(name, "fail", "not run: the run's checkpoint cannot be loaded"))
        return report
    data = load_run_data(run, check=False)  # a changed dataset is reported by the checks, not refused
    report.checks.append(check_evaluation(run, data, tolerance))
    if export is not None:
        report.checks.append(check_integrity(run, data, export))
        report.checks.append(check_rederivation(run, data, export, sample, seed, atol))
        if retrain_epochs:
            report.checks.append(check_quality(run, data, export, retrain_epochs, None, baseline, min_gain))
    return report
