"""The labels of a baseline run (--method random, human or kmeans): the fixed hard targets it trained on.

Random and human targets are a deterministic function of the run's config and data, recomputed:
random labels are drawn once from `seed + 1` over the training split
(`auxgen.trainer.default_targets`), human labels map each sample's fine label to its auxiliary
class (`auxgen.compose.hierarchy_for`). k-means targets would need the single-task network trained
again, so the run keeps them (`targets.npy`, training split only) and they are read from there.
They are exported as one-hot soft labels (entropy 0); such an export has no generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export.labels import Batches, Rows
from auxgen.export.sink import SplitSource
from auxgen.paths import one_line
from auxgen.run import LoadedRun

EXPORTABLE = ("random", "human", "kmeans")
TRAIN_ONLY = ("random", "kmeans")  # methods whose targets exist for the training split only


def check_exportable(run: LoadedRun, splits: list[str], generator_formats: tuple[str, ...] | str) -> None:
    """A one-line AuxgenError unless this run's labels can be exported with these options."""
    method = run.cfg.method
    if run.generator is not None:
        return
    if method not in EXPORTABLE:
        raise AuxgenError(f"{run.run_dir} was trained with --method {method}: it trains on no auxiliary labels")
    if generator_formats:
        raise AuxgenError(f"--generator: {run.run_dir} was trained with --method {method}, which has no label "
                          f"generator; export without --generator")
    if method in TRAIN_ONLY and "test" in splits:
        raise AuxgenError(f"{run.run_dir} was trained with --method {method}, whose labels exist for the training "
                          f"split only; pass --split train")


def baseline_hard(run: LoadedRun, data: Data, split: str) -> np.ndarray:
    """The hard auxiliary targets [N] (int64) the run trained on, for `split` (random: train only)."""
    from auxgen.compose import hierarchy_for
    from auxgen.trainer import default_targets

    hier, human_map = hierarchy_for(run.cfg, data)
    if tuple(hier.psi) != tuple(run.hier.psi):
        raise AuxgenError(f"{run.run_dir}: the data's label tree gives psi {list(hier.psi)}, the run has "
                          f"{list(run.hier.psi)}")
    if split == "train" and run.cfg.method == "kmeans":
        return saved_targets(run, data.train.labels.numpy())
    if split == "train":
        targets = default_targets(run.cfg, data, hier, human_map)
        assert targets.labels is not None
        return targets.labels.numpy().astype(np.int64)
    fine = getattr(data, split).fine
    if run.cfg.method != "human" or human_map is None or fine is None:
        raise AuxgenError(f"{run.run_dir}: --method {run.cfg.method} has no labels for the {split} split")
    return human_map[fine].numpy().astype(np.int64)


def saved_targets(run: LoadedRun, primary: np.ndarray) -> np.ndarray:
    """The k-means run's targets.npy: int64 [n] in [0, K), each in its sample's primary block, read without
    pickles; one line if it is not that."""
    path = _targets_path(run)
    try:
        hard = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise AuxgenError(f"{path}: not a numpy array file auxgen wrote ({one_line(e, 120)})") from None
    if not isinstance(hard, np.ndarray):  # an .npz archive (np.load gives a mapping of arrays)
        hard.close()
        raise AuxgenError(f"{path}: an .npz archive, not the .npy array auxgen writes (np.save of one int64 array)")
    n, num_aux = len(primary), run.hier.num_aux
    if hard.dtype != np.int64 or hard.shape != (n,) or (n and (hard.min() < 0 or hard.max() >= num_aux)):
        raise AuxgenError(f"{path}: expected {n} int64 labels in [0, {num_aux}), got {hard.dtype} {hard.shape}")
    _check_in_blocks(path, hard, primary, run.hier.offsets, run.hier.psi)
    return hard


def _targets_path(run: LoadedRun) -> Path:
    """targets.npy, a regular file (not a link, FIFO or folder)."""
    from auxgen.paths import regular_file_problem
    from auxgen.rundir import RunDir

    path = RunDir(run.run_dir).targets
    if not path.exists() and not path.is_symlink():
        raise AuxgenError(f"{run.run_dir} has no {path.name} (a --method kmeans run keeps its targets there; runs "
                          f"made before auxgen kept them cannot be exported): train it again")
    problem = "is a link (auxgen writes a file)" if path.is_symlink() else regular_file_problem(path)
    if problem:
        raise AuxgenError(f"{path} {problem}; refusing to read it")
    return path


def _check_in_blocks(path: Path, hard: np.ndarray, primary: np.ndarray, offsets: tuple[int, ...],
                     psi: tuple[int, ...]) -> None:
    """Every target in its own sample's block: k-means clusters inside each primary class (verify would fail any
    other label later, after a whole export)."""
    lo = np.asarray(offsets, dtype=np.int64)[primary]
    outside = np.flatnonzero((hard < lo) | (hard >= lo + np.asarray(psi, dtype=np.int64)[primary]))
    if len(outside):
        i = int(outside[0])
        raise AuxgenError(f"{path}: {len(outside)} targets lie outside their primary class's block (sample {i}: "
                          f"class {int(primary[i])} owns {int(lo[i])}..{int(lo[i]) + psi[int(primary[i])] - 1}, "
                          f"target {int(hard[i])}); not the targets this run trained on: train it again")


def one_hot_rows(hard: np.ndarray, num_aux: int) -> np.ndarray:
    """float32 [N, K] one-hot rows of hard labels."""
    soft = np.zeros((len(hard), num_aux), dtype=np.float32)
    soft[np.arange(len(hard)), hard] = 1.0
    return soft


def baseline_batches(run: LoadedRun, data: Data, splits: list[str], batch_size: int) -> Batches:
    """The label source of a baseline run: one-hot rows in the fixed batching (every view of a sample gets the
    sample's label)."""
    hard_of = {s: baseline_hard(run, data, s) for s in splits}
    k = run.hier.num_aux

    def batches(sp: SplitSource, start_row: int) -> Iterator[Rows]:
        hard = hard_of[sp.name]
        v = sp.views.shape[1] if sp.views is not None else 1
        first = (start_row // batch_size) * batch_size
        for r0 in range(first, len(hard) * v, batch_size):
            h = hard[np.arange(r0, min(r0 + batch_size, len(hard) * v)) // v]
            yield r0, one_hot_rows(h, k), h, np.zeros(len(h), dtype=np.float32)

    return batches
