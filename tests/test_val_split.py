"""--val-split: a seeded, stratified validation split out of the training set that judges `best`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_config

from auxgen.checkpoint import load_checkpoint
from auxgen.config import resolve_config
from auxgen.errors import AuxgenError
from auxgen.rundir import RunDir
from auxgen.trainer import VAL_MIN_CLASS_ROWS, hold_out_val, train


def test_the_split_is_stratified_seeded_and_held_out_of_the_training_rows():
    labels = torch.arange(3).repeat_interleave(torch.tensor([100, 40, 60]))
    rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    frac, left, val = hold_out_val(tiny_config(val_split=0.1), labels, rows)
    assert frac == 0.1
    assert torch.bincount(labels[val]).tolist() == [10, 4, 6]  # the same share of each primary class
    assert not set(left.tolist()) & set(val.tolist()) and len(left) + len(val) == len(rows)
    assert torch.equal(left, rows[~torch.isin(rows, val)])  # the rows left keep their order
    again = hold_out_val(tiny_config(val_split=0.1, seed=7), labels, rows)[2]
    assert torch.equal(val, again)  # one split of the data for every seed


def test_the_default_holds_out_a_tenth_only_where_every_class_is_large_enough():
    big = torch.arange(2).repeat_interleave(VAL_MIN_CLASS_ROWS)
    frac, _, val = hold_out_val(tiny_config(), big, torch.arange(len(big)))
    assert frac == 0.1 and len(val) == len(big) // 10
    small = torch.cat([big, torch.tensor([2] * (VAL_MIN_CLASS_ROWS - 1))])
    frac, left, val = hold_out_val(tiny_config(), small, torch.arange(len(small)))
    assert frac == 0.0 and len(val) == 0 and len(left) == len(small)
    assert resolve_config(None, {"preset": "paper"}).val_split == 0.0  # the paper's behaviour


def test_a_bad_val_split_is_one_line(cli, tmp_path):
    code, _, err = cli("train", "--dataset", "digits", "--val-split", "1.5", "--out", tmp_path / "r")
    assert code == 2 and "--val-split must be in [0, 1)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    summary = train(tiny_config(epochs=3, val_split=0.2), out, show=False, return_run=True)
    return out, summary


def test_best_is_chosen_on_validation_accuracy_and_the_rows_are_recorded(val_run):
    out, s = val_run
    rd = RunDir(out)
    history = [json.loads(line) for line in rd.metrics.read_text().splitlines()]
    assert all({"val_loss", "val_acc", "test_acc"} <= set(m) for m in history)
    vals = [m["val_acc"] for m in history]
    best_epoch = vals.index(max(vals)) + 1
    assert load_checkpoint(rd.best)["best_epoch"] == best_epoch == s["best_epoch"]
    assert s["best_on"] == "val_acc" and s["best_test_acc"] == history[best_epoch - 1]["test_acc"]
    meta = json.loads(rd.config.read_text())
    tr = s["run"]
    assert meta["train"]["val_split"] == 0.2 and meta["data"]["val_rows"] == tr.val_idx.tolist()
    assert meta["data"]["num_val"] == len(tr.val_idx) > 0
    assert not set(tr.val_idx.tolist()) & set(tr.train_idx.tolist())  # never trained on


def test_a_resume_whose_split_differs_from_the_recorded_rows_is_refused(val_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(val_run[0], run)
    meta = json.loads(RunDir(run).config.read_text())
    meta["data"]["val_rows"] = meta["data"]["val_rows"][1:]
    RunDir(run).config.write_text(json.dumps(meta))
    last = RunDir(run).last.read_bytes()
    with pytest.raises(AuxgenError, match="validation rows"):
        train(resolve_config(RunDir(run).config, {"epochs": 4}), run, resume=True, show=False)
    assert RunDir(run).last.read_bytes() == last


def test_a_run_saved_without_val_split_loads_resumes_and_means_none(tiny_run, tmp_path):
    from auxgen.run import load_run

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    meta = json.loads(RunDir(run).config.read_text())
    meta["train"].pop("val_split", None)
    RunDir(run).config.write_text(json.dumps(meta))
    assert load_run(run, "last").cfg.val_split == 0.0
    cfg = resolve_config(RunDir(run).config, {"epochs": 3})
    s = train(cfg, run, resume=True, show=False)
    assert s["epochs"] == 3 and s["best_on"] == "test_acc"
    assert "val_acc" not in json.loads(RunDir(run).metrics.read_text().splitlines()[-1])


def test_a_val_split_that_leaves_less_than_a_batch_is_refused():
    with pytest.raises(AuxgenError, match="fewer than one batch"):
        train(tiny_config(val_split=0.99, epochs=1), None, show=False)


def test_best_follows_validation_even_where_test_accuracy_disagrees(tmp_path, monkeypatch):
    import auxgen.trainer
    from auxgen.compose import load_data

    cfg = tiny_config(epochs=3, val_split=0.2)
    data, real, tests = load_data(cfg), auxgen.trainer.evaluate, []

    def scripted(model, split, *a, **k):  # validation falls over the epochs while test rises
        is_test = split is data.test
        tests.append(is_test)
        epoch = sum(tests) + (0 if is_test else 1)  # each epoch evaluates validation, then test
        return {**real(model, split, *a, **k), "acc": 0.1 * epoch if is_test else 1.0 - 0.1 * epoch}

    monkeypatch.setattr(auxgen.trainer, "evaluate", scripted)
    s = train(cfg, tmp_path / "r", show=False, data=data)
    assert s["best_epoch"] == 1 and s["best_on"] == "val_acc"
    assert load_checkpoint(RunDir(tmp_path / "r").best)["epoch"] == 1
