"""Label statistics, one definition for training, export and the warnings.

Sums are kept as tensors on whatever device the labels live on, so the trainer adds a batch
without a host sync; `summary()` is the one place that reads them back. Field names:

- aux_usage_entropy / _max: entropy of the mean soft label over all K auxiliary classes.
- aux_block_usage_frac: per primary block, entropy of the block's mean soft label over its
  psi classes divided by log psi, averaged over blocks with psi > 1 (weighted by rows).
  1 = every auxiliary class of a block is used equally; 0 = one class takes the block.
- aux_hard_usage_entropy: the same as aux_usage_entropy for argmax (hard) labels.
- aux_sample_entropy: mean per-sample entropy (nats); aux_sample_entropy_frac: the same
  divided by log psi of the sample's block (blocks with psi > 1). 1 = uniform in the block.
- aux_classes_used / aux_classes: auxiliary classes that are some sample's hard label.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from auxgen.losses import block_entropy


class LabelStats:
    """Running sums over soft labels [R, K] with their primary classes [R]."""

    def __init__(self, psi: tuple[int, ...] | list[int], device: torch.device | str = "cpu") -> None:
        self.psi = tuple(int(p) for p in psi)
        k, c = sum(self.psi), len(self.psi)
        self.log_psi = torch.tensor(self.psi, dtype=torch.float64, device=device).log()
        self.usage = torch.zeros(c, k, dtype=torch.float64, device=device)  # soft mass per (primary, aux class)
        self.hard = torch.zeros(k, dtype=torch.int64, device=device)        # hard-label counts per aux class
        self.rows = torch.zeros((), dtype=torch.int64, device=device)
        self.entropy_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.frac_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.frac_rows = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def add(self, soft: torch.Tensor, primary: torch.Tensor) -> None:
        """Add rows of soft labels [R, K] (any float dtype) with their primary classes [R]."""
        soft = soft.detach().to(self.usage.device, torch.float64).reshape(-1, self.usage.shape[1])
        primary = primary.detach().to(self.usage.device).reshape(-1)
        self.usage.index_add_(0, primary, soft)
        # index_add_, not bincount: bincount sizes its output on the host, a sync per batch on CUDA
        self.hard.index_add_(0, soft.argmax(1), torch.ones(len(soft), dtype=torch.int64, device=soft.device))
        self.rows += len(soft)
        h = block_entropy(soft)
        self.entropy_sum += h.sum()
        log_psi = self.log_psi[primary]
        ok = log_psi > 0  # a block of one auxiliary class has no entropy to speak of
        self.frac_sum += torch.where(ok, h / log_psi.clamp_min(1e-12), 0).sum()
        self.frac_rows += ok.sum()

    def merge(self, other: LabelStats) -> None:
        """Add another accumulator's sums (same psi)."""
        for name in ("usage", "hard", "rows", "entropy_sum", "frac_sum", "frac_rows"):
            getattr(self, name).add_(getattr(other, name).to(self.usage.device))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe sums (for resumable exports)."""
        return {"usage": self.usage.cpu().tolist(), "hard": self.hard.cpu().tolist(), "rows": int(self.rows),
                "entropy_sum": float(self.entropy_sum), "frac_sum": float(self.frac_sum),
                "frac_rows": int(self.frac_rows)}

    @classmethod
    def from_dict(cls, psi: tuple[int, ...] | list[int], d: dict[str, Any]) -> LabelStats:
        s = cls(psi)
        s.usage = torch.tensor(d["usage"], dtype=torch.float64).reshape(s.usage.shape)
        s.hard = torch.tensor(d["hard"], dtype=torch.int64)
        s.rows, s.frac_rows = torch.tensor(int(d["rows"])), torch.tensor(int(d["frac_rows"]))
        s.entropy_sum = torch.tensor(float(d["entropy_sum"]), dtype=torch.float64)
        s.frac_sum = torch.tensor(float(d["frac_sum"]), dtype=torch.float64)
        return s

    def summary(self) -> dict[str, Any]:
        """The statistics as plain numbers (one host sync)."""
        usage, hard = self.usage.cpu(), self.hard.cpu().double()
        rows, frac_rows = int(self.rows), int(self.frac_rows)
        block_fracs, weights, o = [], [], 0
        for i, p in enumerate(self.psi):
            mass = usage[i, o:o + p]
            if p > 1 and float(mass.sum()) > 0:
                block_fracs.append(_entropy(mass) / math.log(p))
                weights.append(float(mass.sum()))
            o += p
        block = sum(f * w for f, w in zip(block_fracs, weights, strict=True)) / sum(weights) if weights else None
        return {"aux_usage_entropy": _entropy(usage.sum(0)), "aux_usage_entropy_max": math.log(len(hard)),
                "aux_block_usage_frac": block,
                "aux_hard_usage_entropy": _entropy(hard),
                "aux_classes_used": int((hard > 0).sum()), "aux_classes": len(hard),
                "aux_sample_entropy": float(self.entropy_sum) / rows if rows else None,
                "aux_sample_entropy_frac": float(self.frac_sum) / frac_rows if frac_rows else None}


def _entropy(mass: torch.Tensor) -> float:
    p = mass / mass.sum().clamp_min(1e-12)
    return float(-torch.special.xlogy(p, p).sum())


# ------------------------------------------------------------------------------ against the fine labels
def nmi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised mutual information of two labelings [R] (arithmetic mean of the entropies, as scikit-learn's
    default); 1.0 when both are constant, 0 when either alone is."""
    a, b = a.long().cpu(), b.long().cpu()
    _, a = a.unique(return_inverse=True)
    _, b = b.unique(return_inverse=True)
    na, nb = int(a.max()) + 1 if len(a) else 0, int(b.max()) + 1 if len(b) else 0
    joint = torch.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).double()
    ha, hb = _entropy(joint.sum(1)), _entropy(joint.sum(0))
    if ha == 0 and hb == 0:
        return 1.0
    mi = ha + hb - _entropy(joint.flatten())
    return max(mi, 0.0) / ((ha + hb) / 2)


def in_block_nmi(hard: torch.Tensor, fine: torch.Tensor, primary: torch.Tensor) -> float | None:
    """NMI of the auxiliary hard labels with the fine labels inside each primary class, averaged weighted by the
    class's rows (None without rows): whether the labels split a class the way its fine classes do."""
    scores, weights = [], []
    for c in primary.unique().tolist():
        own = primary == c
        scores.append(nmi(hard[own], fine[own]))
        weights.append(int(own.sum()))
    return sum(s * w for s, w in zip(scores, weights, strict=True)) / sum(weights) if weights else None


def neighbour_purity(neighbours: torch.Tensor, fine: torch.Tensor, rows: torch.Tensor) -> float | None:
    """The share of each row's pair-term neighbours that share its fine class, averaged over `rows`.

    neighbours [N, k] and fine [N] are indexed by row of the training split; None without rows.
    """
    if not len(rows):
        return None
    neighbours, fine, rows = neighbours.cpu(), fine.cpu(), rows.cpu()
    return float((fine[neighbours[rows]] == fine[rows][:, None]).double().mean())
