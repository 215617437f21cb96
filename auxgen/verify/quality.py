"""Check 4, label quality (optional): retrain a fresh network on the frozen exported labels next to a
single-task one (and random labels of the same psi), same seed and schedule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from auxgen.data import Data
from auxgen.errors import AuxgenError
from auxgen.export.read import Export, numeric_problem
from auxgen.run import LoadedRun
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
    return {"acc": s["final_test_acc"], "best_acc": max(s["history"]), "history": s["history"]}


def check_quality(run: LoadedRun, data: Data, export: Export, epochs: int, seed: int | None = None,
                  baseline: str | None = None, min_gain: float | None = None) -> CheckResult:
    """Frozen exported labels vs single-task (and random labels of the same psi), same seed and schedule."""
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


