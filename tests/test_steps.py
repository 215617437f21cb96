"""The step regimes' side of training (auxgen/steps.py): the objective from the config, and what a resumed
k-means run trains on."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config

from auxgen.config import PRESETS, TrainConfig, objective_fields
from auxgen.errors import AuxgenError
from auxgen.maxl import Objective
from auxgen.rundir import RunDir
from auxgen.steps import objective_for, paper_objective


def test_objective_has_no_defaults_so_the_config_is_their_one_source():
    missing = dataclasses.MISSING
    assert [f.name for f in dataclasses.fields(Objective) if f.default is not missing
            or f.default_factory is not missing] == []


def test_every_objective_field_is_filled_from_the_config_or_explicitly():
    # a distinct value per config field: a field filled from the wrong option, or not at all, shows
    marks = {name: object() for name in objective_fields()}
    cfg = dataclasses.replace(tiny_config(gen_decay="l1", gen_weight_decay=3e-4), **marks)
    weighting = torch.nn.Linear(2, 2)
    gen = torch.nn.Module()
    gen.loss_weighting = weighting
    obj = objective_for(cfg, 0.125, gen)
    explicit = {"alpha": 0.125, "gen_l1": 3e-4, "weighting": weighting}
    assert {f.name for f in dataclasses.fields(Objective)} == set(marks) | set(explicit)
    for name, value in {**marks, **explicit}.items():
        assert getattr(obj, name) is value or getattr(obj, name) == value, name


def test_paper_objective_is_the_paper_presets():
    paper = TrainConfig(**PRESETS["paper"])
    assert paper_objective(0.1) == objective_for(paper, 0.1)
    assert (paper_objective(0.1).entropy_weight, paper_objective(0.1).usage_entropy) == (0.2, "batch")
    assert paper_objective(0.1, 0.5, entropy_weight=0.0).gamma == 0.5


@pytest.fixture(scope="module")
def kmeans_stopped(tmp_path_factory):
    """A k-means run (features from a finished single-task run) stopped after its first of two epochs, and
    the same run uninterrupted."""
    from auxgen.trainer import train

    root = tmp_path_factory.mktemp("km")
    train(tiny_config(method="single", epochs=1, primary_groups=5), root / "feat", show=False)
    cfg = tiny_config(method="kmeans", primary_groups=5, features_from=str(root / "feat"))

    def stop(m):
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, root / "stopped", show=False, on_epoch_end=stop)
    train(cfg, root / "whole", show=False)
    return root, cfg


def test_a_resumed_kmeans_run_trains_on_its_saved_targets(kmeans_stopped, tmp_path, monkeypatch):
    import auxgen.trainer
    from auxgen.run import load_run
    from auxgen.trainer import train

    root, cfg = kmeans_stopped
    run = tmp_path / "run"
    shutil.copytree(root / "stopped", run)
    saved = np.load(RunDir(run).targets)

    def refuse(*a, **k):
        raise AssertionError("targets recomputed on resume")

    monkeypatch.setattr(auxgen.trainer, "kmeans_targets", refuse)
    shutil.rmtree(root / "feat")  # the features' run is gone: resume needs only what the run saved
    train(cfg, run, resume=True, show=False)
    assert np.array_equal(np.load(RunDir(run).targets), saved)
    whole, resumed = load_run(root / "whole", "last"), load_run(run, "last")
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_resumed_kmeans_run_refuses_targets_that_are_not_its_own(kmeans_stopped, tmp_path):
    from auxgen.trainer import train

    root, cfg = kmeans_stopped
    run = tmp_path / "run"
    shutil.copytree(root / "stopped", run)
    hard = np.load(RunDir(run).targets)
    np.save(RunDir(run).targets, (hard + 1) % 10)  # labels outside their rows' blocks
    last = RunDir(run).last.read_bytes()
    with pytest.raises(AuxgenError, match="targets.npy is not the run's k-means targets"):
        train(cfg, run, resume=True, show=False)
    assert RunDir(run).last.read_bytes() == last
