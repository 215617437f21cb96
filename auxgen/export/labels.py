"""The generator over a split: soft labels in a fixed batching, so anyone can recompute them bit-exactly.

Labels are computed over *rows* in split order, in batches of `batch_size` consecutive rows
starting at row 0: a row is a sample, or with views one (sample, view) pair, sample-major
(row = index * V + view). Batch composition can change float results (kernels pick
algorithms by batch size), so the reference computation and the exporter share this batching.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from auxgen.data import apply_views
from auxgen.losses import block_entropy


def _rows(images: torch.Tensor, primary: torch.Tensor, views: torch.Tensor | None, pad: int,
          r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and primary labels of rows r0..r1 (views applied when given as [N, V, 3])."""
    if views is None:
        return images[r0:r1], primary[r0:r1]
    v = views.shape[1]
    idx = torch.arange(r0, r1) // v
    return apply_views(images[idx], views.reshape(-1, 3)[r0:r1], pad), primary[idx]


@torch.inference_mode()
def iter_label_batches(generator: torch.nn.Module, images: torch.Tensor, primary: torch.Tensor,
                       device: torch.device | str, batch_size: int = 500, views: torch.Tensor | None = None,
                       pad: int = 0, start_row: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, float32 soft labels [b, K] on `device`) batch by batch, from the batch holding start_row.

    The first yielded batch may begin before start_row: batches always start at multiples of
    batch_size, so that a resumed export computes exactly what an uninterrupted one did.
    """
    n_rows = len(primary) * (views.shape[1] if views is not None else 1)
    first = (start_row // batch_size) * batch_size
    for r0 in range(first, n_rows, batch_size):
        r1 = min(r0 + batch_size, n_rows)
        x, y = _rows(images, primary, views, pad, r0, r1)
        yield r0, generator(x.to(device, non_blocking=True), y.to(device, non_blocking=True)).float()


def compute_soft_labels(generator: torch.nn.Module, images_uint8: torch.Tensor, primary: torch.Tensor,
                        device: torch.device | str, batch_size: int = 500) -> torch.Tensor:
    """The reference computation: float32 [N, K] soft labels on the CPU, eval mode, batches of batch_size rows.

    For exported views, pass the view images (`apply_views` of each sample repeated V times,
    sample-major) and the repeated primary labels: that is exactly what the exporter computes.
    """
    was_training = generator.training
    generator.eval()
    try:
        out = [soft.cpu() for _, soft in iter_label_batches(generator, images_uint8, primary, device, batch_size)]
    finally:
        generator.train(was_training)
    k = int(generator.block_id.numel()) if hasattr(generator, "block_id") else 0
    return torch.cat(out) if out else torch.zeros(0, k)


def hard_and_entropy(soft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """aux_hard (argmax, first on ties) and per-row entropy in nats, both from float32 labels."""
    return soft.argmax(dim=1), block_entropy(soft)


class LabelStats:
    """Running label statistics for the summary: auxiliary-class usage and per-sample entropy."""

    def __init__(self, psi: tuple[int, ...] | list[int]) -> None:
        self.psi = tuple(psi)
        self.log_psi = np.log(np.asarray(self.psi, dtype=np.float64))
        self.usage = np.zeros(sum(self.psi), dtype=np.float64)  # sum of soft labels per auxiliary class
        self.hard = np.zeros(sum(self.psi), dtype=np.int64)     # hard-label counts per auxiliary class
        self.rows, self.entropy_sum, self.frac_sum, self.frac_rows = 0, 0.0, 0.0, 0

    def add(self, soft: np.ndarray, primary: np.ndarray, hard: np.ndarray, entropy: np.ndarray) -> None:
        """Rows of float32 soft labels [R, K] with their primary labels, hard labels and entropies [R]."""
        self.usage += soft.sum(0, dtype=np.float64)
        self.hard += np.bincount(hard, minlength=len(self.usage))
        self.rows += len(soft)
        self.entropy_sum += float(entropy.sum(dtype=np.float64))
        log_psi = self.log_psi[primary]
        ok = log_psi > 0  # a block of one auxiliary class has no entropy to speak of
        self.frac_sum += float((entropy[ok] / log_psi[ok]).sum())
        self.frac_rows += int(ok.sum())

    def add_chunk(self, c: Any, lo: int = 0, hi: int | None = None) -> None:
        """Samples lo..hi of a pipeline Chunk (views flattened into rows)."""
        k = c.soft.shape[-1]
        sl = slice(lo, hi)
        reps = c.soft.shape[1] if c.soft.ndim == 3 else 1
        self.add(c.soft[sl].reshape(-1, k), np.repeat(c.primary[sl], reps), c.hard[sl].reshape(-1),
                 c.entropy[sl].reshape(-1))

    def merge(self, other: LabelStats) -> None:
        self.usage += other.usage
        self.hard += other.hard
        self.rows += other.rows
        self.entropy_sum += other.entropy_sum
        self.frac_sum += other.frac_sum
        self.frac_rows += other.frac_rows

    def to_dict(self) -> dict[str, Any]:
        return {"usage": self.usage.tolist(), "hard": self.hard.tolist(), "rows": self.rows,
                "entropy_sum": self.entropy_sum, "frac_sum": self.frac_sum, "frac_rows": self.frac_rows}

    @classmethod
    def from_dict(cls, psi: tuple[int, ...] | list[int], d: dict[str, Any]) -> LabelStats:
        s = cls(psi)
        s.usage, s.hard = np.asarray(d["usage"], dtype=np.float64), np.asarray(d["hard"], dtype=np.int64)
        s.rows, s.entropy_sum, s.frac_sum, s.frac_rows = d["rows"], d["entropy_sum"], d["frac_sum"], d["frac_rows"]
        return s

    def summary(self) -> dict[str, Any]:
        def ent(counts: np.ndarray) -> float:
            p = counts / max(float(counts.sum()), 1e-12)
            p = p[p > 0]
            return float(-(p * np.log(p)).sum())

        return {"aux_usage_entropy": ent(self.usage), "aux_hard_usage_entropy": ent(self.hard.astype(np.float64)),
                "aux_usage_entropy_max": math.log(len(self.usage)),
                "aux_classes_used": int((self.hard > 0).sum()), "aux_classes": len(self.usage),
                "mean_sample_entropy": self.entropy_sum / self.rows if self.rows else None,
                "sample_entropy_frac": self.frac_sum / self.frac_rows if self.frac_rows else None}
