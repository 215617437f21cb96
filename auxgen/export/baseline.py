"""The labels of a baseline run (--method random or human): the fixed hard targets it trained on, recomputed.

Those targets are a deterministic function of the run's config and data: random labels are drawn
once from `seed + 1` over the training split (`auxgen.trainer.default_targets`), human labels map
each sample's fine label to its auxiliary class (`auxgen.compose.hierarchy_for`). They are exported
as one-hot soft labels (entropy 0); such an export has no generator. k-means targets need the
single-task network trained first (or another run's features), so they are not recomputed here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export.labels import Batches, Rows
from auxgen.export.sink import SplitSource
from auxgen.run import LoadedRun

EXPORTABLE = ("random", "human")


def check_exportable(run: LoadedRun, splits: list[str], generator_formats: tuple[str, ...] | str) -> None:
    """A one-line AuxgenError unless this run's labels can be exported with these options."""
    method = run.cfg.method
    if run.generator is not None:
        return
    if method not in EXPORTABLE:
        why = ("k-means labels need the single-task network trained again to be recomputed; export a maxl, "
               "random or human run" if method == "kmeans" else "it trains on no auxiliary labels")
        raise AuxgenError(f"{run.run_dir} was trained with --method {method}: {why}")
    if generator_formats:
        raise AuxgenError(f"--generator: {run.run_dir} was trained with --method {method}, which has no label "
                          f"generator; export without --generator")
    if method == "random" and "test" in splits:
        raise AuxgenError(f"{run.run_dir} was trained with --method random, whose labels are drawn for the training "
                          f"split only; pass --split train")


def baseline_hard(run: LoadedRun, data: Data, split: str) -> np.ndarray:
    """The hard auxiliary targets [N] (int64) the run trained on, for `split` (random: train only)."""
    from auxgen.compose import hierarchy_for
    from auxgen.trainer import default_targets

    hier, human_map = hierarchy_for(run.cfg, data)
    if tuple(hier.psi) != tuple(run.hier.psi):
        raise AuxgenError(f"{run.run_dir}: the data's label tree gives psi {list(hier.psi)}, the run has "
                          f"{list(run.hier.psi)}")
    if split == "train":
        targets = default_targets(run.cfg, data, hier, human_map)
        assert targets.labels is not None
        return targets.labels.numpy().astype(np.int64)
    fine = getattr(data, split).fine
    if run.cfg.method != "human" or human_map is None or fine is None:
        raise AuxgenError(f"{run.run_dir}: --method {run.cfg.method} has no labels for the {split} split")
    return human_map[fine].numpy().astype(np.int64)


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
