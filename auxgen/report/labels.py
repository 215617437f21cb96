"""The labels a report shows: from an export (--labels) or from the run's generator, and what
they say (usage per primary class, per-sample entropy, agreement with human fine labels).

Work is bounded: at most `max_samples` rows of one split, a seeded choice, so a report of a
CIFAR-sized run takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxgen.errors import AuxgenError
from auxgen.export.read import Export, read_export
from auxgen.label_stats import LabelStats
from auxgen.report.runs import RunInfo
from auxgen.rundir import RunDir
from auxgen.verify.integrity import whole_problems
from auxgen.verify.result import problems_reason

NEARLY_UNIFORM = 0.95   # per-sample entropy above this fraction of log psi: labels add little (the trainer's threshold)
COLLAPSING = 0.5        # block usage below this fraction of log psi: classes collapsing (the trainer's threshold)


@dataclass
class Labels:
    """Soft labels of a sample of one split, with what is known about those rows."""

    source: str                    # "generator" or "export"
    split: str
    split_size: int                # rows in the split
    rows: np.ndarray               # row of each sample in the split [n]
    primary: np.ndarray            # [n] int64
    soft: np.ndarray               # [n, K] float32
    psi: tuple[int, ...]
    class_names: list[str]
    images: np.ndarray | None = None      # [n, C, H, W] uint8, when the images could be had
    fine: np.ndarray | None = None        # [n] human fine labels, where the dataset has them
    fine_names: list[str] | None = None
    checkpoint: str = ""                  # the checkpoint that made the labels (path, or as the export records it)
    checkpoint_sha256: str = ""
    export: dict[str, Any] | None = None  # path, kind, created, problems (export source)
    notes: list[str] = field(default_factory=list)

    @property
    def hard(self) -> np.ndarray:
        return self.soft.argmax(1)


def _choose(n: int, max_samples: int, seed: int) -> np.ndarray:
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def _load_data(run: RunInfo, data_root: str | None):
    """The run's dataset (never downloaded: a report does not fetch data), checked against its fingerprint."""
    from auxgen.compose import load_data
    from auxgen.config import TrainConfig

    opts = dict(run.train_cfg)
    opts["download"] = False
    if data_root is not None:
        opts["data_root"] = data_root
    cfg = TrainConfig.from_dict(opts, where=str(RunDir(run.run_dir).config)).validate()
    data = load_data(cfg)
    recorded = run.meta.get("data", {}).get("fingerprint")
    if recorded and data.fingerprint() != recorded:
        raise AuxgenError(f"the dataset at {cfg.data_root} differs from the one {run.run_dir} was trained on "
                          f"(fingerprint mismatch); pass --data-root")
    return data


def _fine_names(run: RunInfo, data: Any) -> list[str] | None:
    if data.fine_names:
        return list(data.fine_names)
    if data.name == "cifar100":
        from auxgen.hierarchy import CIFAR100_FINE_NAMES
        return list(CIFAR100_FINE_NAMES)
    return None


def _class_names(run: RunInfo, n: int) -> list[str]:
    names = run.meta.get("data", {}).get("class_names")
    if isinstance(names, list) and len(names) == n:
        return [str(x) for x in names]
    return [str(i) for i in range(n)]


def _psi(run: RunInfo) -> tuple[int, ...]:
    psi = run.meta.get("psi")
    if not isinstance(psi, list) or not psi or not all(isinstance(p, int) and p > 0 for p in psi):
        raise AuxgenError(f"{run.run_dir / 'config.json'} holds no valid psi; the run directory is damaged")
    return tuple(psi)


def labels_from_generator(run: RunInfo, checkpoint: str = "last", split: str = "test", max_samples: int = 5000,
                          seed: int = 0, device: str | None = None, data_root: str | None = None) -> Labels:
    """Run the run's generator (eval mode) over a seeded sample of one split of its dataset."""
    from auxgen.export.labels import compute_soft_labels
    from auxgen.run import load_run

    loaded = load_run(run.run_dir, checkpoint, device=device or "auto", data_root=data_root)
    if loaded.generator is None:
        raise AuxgenError(f"{run.run_dir} is a {run.method} run: it has no label generator")
    data = _load_data(run, data_root)
    sp = getattr(data, split)
    rows = _choose(len(sp), max_samples, seed)
    idx = torch.from_numpy(rows)
    soft = compute_soft_labels(loaded.generator, sp.images[idx], sp.labels[idx], loaded.device, 500)
    return Labels("generator", split, len(sp), rows, sp.labels[idx].numpy(), soft.numpy().astype(np.float32),
                  loaded.hier.psi, _class_names(run, loaded.hier.num_primary), sp.images[idx].numpy(),
                  None if sp.fine is None else sp.fine[idx].numpy(), _fine_names(run, data),
                  str(loaded.checkpoint_path), loaded.checkpoint_sha256)


def labels_from_export(path: str | Path, run: RunInfo, split: str = "test", max_samples: int = 5000, seed: int = 0,
                       data_root: str | None = None) -> Labels:
    """Read a seeded sample of one split of an export; images and fine labels come from the run's dataset."""
    path = Path(path)
    export, notes = _read_for(path, run)
    meta = export.meta
    psi = _psi(run)
    if split not in export.splits:
        other = next(iter(export.splits))
        notes.append(f"the export holds no {split} split; showing its {other} split")
        split = other
    es = export.splits[split]
    soft_all = np.asarray(es.aux_soft, dtype=np.float32)
    if soft_all.shape[-1] != sum(psi):
        raise AuxgenError(f"--labels {path} has {soft_all.shape[-1]} auxiliary classes but the run has {sum(psi)}")
    pick = _choose(len(es.primary), max_samples, seed)
    soft, views = soft_all[pick], None
    if soft.ndim == 3:  # labels per augmented view: show each image's first view, with that view's label
        soft = soft[:, 0]
        views = None if es.views is None else torch.as_tensor(np.asarray(es.views)[pick, 0])
        notes.append("the export holds labels per augmented view; each sample is shown with its first view")
    rows = np.asarray(es.index, dtype=np.int64)[pick]
    images = fine = fine_names = None
    split_size = len(es.primary)
    try:
        data = _load_data(run, data_root)
        sp = getattr(data, split)
        if rows.min(initial=0) < 0 or rows.max(initial=0) >= len(sp):
            raise AuxgenError(f"the export's rows do not fit the {split} split of the run's dataset")
        idx = torch.from_numpy(rows)
        imgs = sp.images[idx]
        if views is not None:
            from auxgen.data import apply_views
            imgs = apply_views(imgs, views, int(meta.get("pad", data.pad)))
        images = imgs.numpy()
        fine = None if sp.fine is None else sp.fine[idx].numpy()
        fine_names = _fine_names(run, data)
    except AuxgenError as e:
        if es.images is not None and views is None:  # shards with images carry them
            got = [es.images[i] for i in pick]
            if all(g is not None for g in got) and len({g.shape for g in got}) == 1:
                images = np.stack(got)
        notes.append(f"the run's dataset is not available ({e}); "
                     + ("images come from the shards; " if images is not None else "no images; ")
                     + "no comparison with human labels")
    info = {"path": str(path), "kind": export.kind, "created": meta.get("created"),
            "checkpoint": meta.get("checkpoint"), "checkpoint_sha256": meta.get("checkpoint_sha256"),
            "problems": list(export.problems)}
    return Labels("export", split, split_size, rows, np.asarray(es.primary, dtype=np.int64)[pick], soft, psi,
                  _class_names(run, len(psi)), images, fine, fine_names, str(meta.get("checkpoint") or ""),
                  str(meta.get("checkpoint_sha256") or ""), info, notes)


def _read_for(path: Path, run: RunInfo) -> tuple[Export, list[str]]:
    """The export at `path`, refused when unreadable, not whole (verify's file checks) or exported from another
    run; and notes about it (none yet)."""
    export = read_export(path)
    if not export.readable:
        raise AuxgenError(f"--labels {path} cannot be read: {export.problems[0] if export.problems else 'no labels'}")
    if export.meta.get("config_sha256") and export.meta["config_sha256"] != run.config_sha256:
        raise AuxgenError(f"--labels {path} was exported from another run (its config_sha256 is not that of "
                          f"{run.run_dir / 'config.json'})")
    problems = whole_problems(export)
    if problems:  # a report drawn from part of an export would pass for one of all of it
        raise AuxgenError(f"--labels {path} is not a whole export: {problems_reason(problems)} "
                          f"(`auxgen verify --labels {path}` checks it)")
    return export, []


@dataclass
class Block:
    """One primary class's auxiliary classes in the sample."""

    primary: int
    name: str
    offset: int
    psi: int
    n: int                         # samples of this primary class
    mass: np.ndarray               # [psi] mean soft label inside the block (sums to 1 when n > 0)
    hard: np.ndarray               # [psi] samples whose hard label is each class


@dataclass
class HumanAgreement:
    """Generated (hard) versus human fine classes, within each primary class."""

    nmi: float                     # within-class NMI, averaged over primary classes weighted by size
    chance: float                  # the same with hard labels shuffled inside each class (what no relation gives)
    per_class: list[dict[str, Any]]  # primary, name, n, nmi, fine (ids), table [psi, len(fine)]
    skipped: list[str]


@dataclass
class Analysis:
    """What the sampled labels say."""

    stats: dict[str, Any]          # LabelStats.summary() of the sample
    blocks: list[Block]
    entropy_frac: np.ndarray       # per-sample entropy / log psi, samples of blocks with psi > 1
    human: HumanAgreement | None
    warnings: list[str]


def analyse(labels: Labels, seed: int = 0) -> Analysis:
    """Usage per block, entropy fractions, human-label agreement and the warnings they call for."""
    psi = labels.psi
    soft = labels.soft.astype(np.float64)
    primary = labels.primary
    stats = LabelStats(psi)
    stats.add(torch.from_numpy(soft), torch.from_numpy(primary))
    summary = stats.summary()
    hard = soft.argmax(1)
    offsets = np.concatenate([[0], np.cumsum(psi)[:-1]]).astype(int)
    blocks = []
    for i, p in enumerate(psi):
        sel = primary == i
        o = int(offsets[i])
        n = int(sel.sum())
        mass = soft[sel, o:o + p].mean(0) if n else np.zeros(p)
        counts = np.bincount(hard[sel] - o, minlength=p)[:p] if n else np.zeros(p, dtype=int)
        name = labels.class_names[i] if i < len(labels.class_names) else str(i)
        blocks.append(Block(i, name, o, p, n, mass, counts))
    ent = -np.where(soft > 0, soft * np.log(np.where(soft > 0, soft, 1.0)), 0.0).sum(1)
    log_psi = np.log(np.asarray(psi, dtype=np.float64))[primary]
    ok = log_psi > 0
    frac = ent[ok] / log_psi[ok]
    human = _human(labels, hard, offsets, seed) if labels.fine is not None else None
    return Analysis(summary, blocks, frac, human, _warnings(summary, blocks))


def _warnings(s: dict[str, Any], blocks: list[Block]) -> list[str]:
    out = []
    frac = s.get("aux_sample_entropy_frac")
    if frac is not None and frac > NEARLY_UNIFORM:
        out.append(f"labels are nearly uniform inside their blocks: per-sample entropy is {100 * frac:.1f}% of its "
                   f"maximum, so the auxiliary task adds little beyond the primary labels")
    block = s.get("aux_block_usage_frac")
    if block is not None and block < COLLAPSING:
        out.append(f"auxiliary classes collapsing: usage inside each primary class's block is {100 * block:.1f}% "
                   f"of its maximum entropy (a few classes take most of the mass)")
    unused = [(b, k) for b in blocks if b.n for k in range(b.psi) if b.hard[k] == 0 and b.psi > 1]
    if unused:
        total = sum(b.psi for b in blocks if b.n)
        out.append(f"{len(unused)} of {total} auxiliary classes are no sample's hard label in this sample")
    return out


def _human(labels: Labels, hard: np.ndarray, offsets: np.ndarray, seed: int) -> HumanAgreement | None:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    fine = labels.fine
    rng = np.random.default_rng(seed)
    per, skipped = [], []
    for i, p in enumerate(labels.psi):
        sel = labels.primary == i
        name = labels.class_names[i] if i < len(labels.class_names) else str(i)
        if sel.sum() < 2:
            continue
        f, h = fine[sel], hard[sel] - int(offsets[i])
        ids = np.unique(f)
        if len(ids) < 2:  # one human class: nothing for the generated classes to agree with
            skipped.append(name)
            continue
        table = np.zeros((p, len(ids)), dtype=np.int64)
        np.add.at(table, (h, np.searchsorted(ids, f)), 1)
        shuffled = float(np.mean([nmi(f, rng.permutation(h)) for _ in range(5)]))
        per.append({"primary": i, "name": name, "n": int(sel.sum()), "offset": int(offsets[i]),
                    "nmi": float(nmi(f, h)), "chance": shuffled,
                    "fine": ids.tolist(), "table": table})
    if not per:
        return None
    w = np.array([c["n"] for c in per], dtype=np.float64)
    return HumanAgreement(float(np.average([c["nmi"] for c in per], weights=w)),
                          float(np.average([c["chance"] for c in per], weights=w)), per, skipped)


def confident_examples(labels: Labels, block: Block, top: int = 8, low: int = 4) -> list[tuple[list[int], list[int]]]:
    """Per auxiliary class of a block: sample positions it holds most confidently (highest soft mass among the
    primary class's samples) and its least confident members (lowest mass among samples whose hard label it is)."""
    sel = np.flatnonzero(labels.primary == block.primary)
    hard = labels.hard[sel]
    out = []
    for k in range(block.psi):
        col = labels.soft[sel, block.offset + k]
        order = sel[np.argsort(-col, kind="stable")]
        members = sel[hard == block.offset + k]
        members = members[np.argsort(labels.soft[members, block.offset + k], kind="stable")]
        best = order[:top].tolist()
        worst = [m for m in members[:low].tolist() if m not in best] if len(members) > top else []
        out.append((best, worst))
    return out

