"""Check 4, label quality (optional): retrain a fresh network on the frozen exported labels next to a
single-task one and random labels of the same psi, over several seeds, with verdicts."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from auxgen.compose import hierarchy_for
from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export.read import Export, numeric_problem
from auxgen.hierarchy import random_labels
from auxgen.run import LoadedRun
from auxgen.stats import mean_ci, paired_difference, verdict
from auxgen.trainer import TargetSource, train
from auxgen.verify.result import CheckResult


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
    # the run's --val-split holds out the same rows here (one split per data): "best" is judged on them
    return {"acc": s["final_test_acc"], "best_acc": s["best_test_acc"], "best_on": s["best_on"],
            "history": s["history"]}


def check_quality(run: LoadedRun, data: Data, export: Export, epochs: int, seed: int | None = None,
                  seeds: int = 3, min_gain: float | None = None) -> CheckResult:
    """Frozen exported labels against single-task and against random labels of the same psi.

    Each arm trains `seeds` fresh networks (seeds seed, seed+1, ...) with the run's backbone and
    schedule. Differences are paired by seed; a comparison "helps" or "hurts" only when its 95%
    interval excludes zero, else it has "no measurable effect". The check passes only when the
    labels help against random labels and do not hurt against single-task: labels that do no
    better than random are not a success (status warn); labels that hurt fail.
    """
    if not export.readable or "train" not in export.splits:
        return CheckResult("quality", "fail", "needs the export's train split (export with --split all or train)")
    bad_type = numeric_problem(export)
    if bad_type:
        return CheckResult("quality", "fail", bad_type)
    seed = run.cfg.seed if seed is None else seed
    s = export.splits["train"]
    train_index = torch.from_numpy(s.index.astype(np.int64))
    if len(train_index) and (int(train_index.min()) < 0 or int(train_index.max()) >= len(data.train)):
        return CheckResult("quality", "fail", "the export's train indices do not fit the dataset (see integrity)")
    soft = torch.from_numpy(s.aux_soft.astype(np.float32))
    views = torch.from_numpy(s.views.astype(np.int64)) if s.views is not None and soft.dim() == 3 else None
    if views is None and soft.dim() == 3:
        soft = soft[:, 0]
    seeds_used = list(range(seed, seed + seeds))
    arms = _train_arms(run, data, train_index, soft, views, epochs, seeds_used)
    acc = {k: [r["acc"] for r in v] for k, v in arms.items()}
    if not all(math.isfinite(a) for v in acc.values() for a in v):
        return CheckResult("quality", "fail", "retraining gave no finite accuracy")
    figures: dict[str, Any] = {"epochs": epochs, "seeds": seeds_used, "backbone": run.cfg.backbone,
                               "n_train": len(train_index), "acc": acc,
                               "history": {k: [r["history"] for r in v] for k, v in arms.items()}}
    reason = _compare(acc, figures) + f" ({epochs} epochs, {seeds} seed{'s' * (seeds > 1)}, {run.cfg.backbone})"
    if seeds < 2:
        reason += "; one seed gives no interval: use --seeds 3 or more for a verdict"
    if min_gain is not None and figures["gain_vs_single"] < min_gain:
        figures["min_gain"] = min_gain
        return CheckResult("quality", "fail", reason + f"; gain below the required {100 * min_gain:+.2f}", figures)
    if "hurts" in figures["verdicts"].values():
        return CheckResult("quality", "fail", reason, figures)
    if figures["verdicts"]["random"] != "helps":
        return CheckResult("quality", "warn", reason + "; not shown to beat random labels", figures)
    return CheckResult("quality", "pass", reason, figures)


def _train_arms(run: LoadedRun, data: Data, train_index: torch.Tensor, soft: torch.Tensor,
                views: torch.Tensor | None, epochs: int, seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """A fresh network per seed and arm: the exported labels, none (single-task), random labels and, where
    the data has them, its fine labels; every arm of a seed starts from the same seed."""
    def per_view(t: torch.Tensor) -> torch.Tensor:  # every view of a sample carries the sample's label
        return t[:, None].expand(-1, views.shape[1], -1) if views is not None else t

    human = _human_labels(run, data, train_index)
    arms: dict[str, list[dict[str, Any]]] = {"exported": [], "single": [], "random": []}
    if human is not None:
        arms["human"] = []
    for sd in seeds:
        # a fixed random class inside each sample's true block, drawn from the seed like --method random
        pick = random_labels(run.hier, data.train.labels[train_index], torch.Generator().manual_seed(sd + 1))
        targets = {"exported": soft, "single": None, "random": per_view(F.one_hot(pick, run.hier.num_aux).float())}
        if human is not None:
            targets["human"] = per_view(human)
        for arm, t in targets.items():
            arms[arm].append(retrain(run, data, train_index, t, epochs, sd, views))
    return arms


def _compare(acc: dict[str, list[float]], figures: dict[str, Any]) -> str:
    """Each arm's mean accuracy and the exported labels' paired gains, into figures; the sentence that says so."""
    for k, v in acc.items():
        figures[f"acc_{k}"], figures[f"acc_{k}_ci95"] = mean_ci(v)
    fine = f", fine labels {_pct(acc['human'])}" if "human" in acc else ""
    parts = [f"frozen labels {_pct(acc['exported'])}, single-task {_pct(acc['single'])}, "
             f"random labels {_pct(acc['random'])}{fine}"]
    verdicts = {}
    for base in ("single", "random"):
        d, h = paired_difference(acc["exported"], acc[base])
        verdicts[base] = verdict(d, h)
        figures[f"gain_vs_{base}"], figures[f"gain_vs_{base}_ci95"] = d, h
        parts.append(f"vs {base}: {100 * d:+.2f}" + ("" if math.isnan(h) else f" ± {100 * h:.2f}") +
                     f" points, {verdicts[base]}")
    figures["verdicts"] = verdicts
    if "human" in acc:
        parts.append(_oracle(acc, figures))
    return "; ".join(parts)


def _human_labels(run: LoadedRun, data: Data, train_index: torch.Tensor) -> torch.Tensor | None:
    """One-hot fine labels of the training rows as auxiliary targets, where the data has a label tree whose psi
    is the run's (the oracle: what the data's own finer labels would give); else None."""
    if data.train.fine is None:
        return None
    try:
        tree, fine_to_aux = hierarchy_for(dataclasses.replace(run.cfg, method="human", psi=None, psi_file=None), data)
    except AuxgenError:
        return None
    if fine_to_aux is None or tuple(tree.psi) != tuple(run.hier.psi):
        return None
    return F.one_hot(fine_to_aux[data.train.fine[train_index]], run.hier.num_aux).float()


def _oracle(acc: dict[str, list[float]], figures: dict[str, Any]) -> str:
    """The fine labels' own gain over single-task, and the share of it the exported labels capture."""
    gap, gap_h = paired_difference(acc["exported"], acc["human"])
    figures["gain_vs_human"], figures["gain_vs_human_ci95"] = gap, gap_h  # informative: it never fails the check
    d, h = paired_difference(acc["human"], acc["single"])
    figures["oracle_gain"], figures["oracle_gain_ci95"] = d, h
    text = f"fine labels vs single: {100 * d:+.2f}" + ("" if math.isnan(h) else f" ± {100 * h:.2f}") + " points"
    if math.isnan(h) or d - h <= 0:
        return text + " (the fine labels do not help beyond the noise here: no yardstick for 'helps')"
    figures["oracle_captured"] = figures["gain_vs_single"] / d
    return text + f"; the exported labels capture {100 * figures['oracle_captured']:.0f}% of it"


def _pct(values: list[float]) -> str:
    m, h = mean_ci(values)
    return f"{100 * m:.2f}%" + ("" if math.isnan(h) else f" ± {100 * h:.2f}")
