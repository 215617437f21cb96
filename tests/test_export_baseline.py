"""Exporting a baseline run (--method random / human / kmeans): the fixed hard targets it trained on, as one-hot
labels."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_config

from auxgen.errors import AuxgenError
from auxgen.export import export_labels
from auxgen.verify import verify


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from auxgen.trainer import train

    root = tmp_path_factory.mktemp("baselines")
    out = {}
    for method, kw in (("random", {}), ("human", {"primary_groups": 5}), ("kmeans", {})):
        out[method] = root / method
        train(tiny_config(method=method, epochs=1, **kw), out[method], show=False)
    return out


def training_targets(run: Path) -> np.ndarray:
    """The hard auxiliary targets training used, from the trainer's own setup of the run's config."""
    from auxgen.run import load_run
    from auxgen.trainer import setup

    r = setup(load_run(run).cfg)
    assert r.targets.kind == "hard"
    return r.targets.labels.cpu().numpy()


@pytest.mark.parametrize("method", ["random", "human", "kmeans"])
def test_exported_baseline_labels_are_the_training_targets(runs, tmp_path, method):
    run = runs[method]
    out = tmp_path / "labels.h5"
    split = "all" if method == "human" else "train"
    summary = export_labels(run, out, split=split)
    assert summary["stats"]["aux_sample_entropy"] == 0.0
    want = training_targets(run)
    with h5py.File(out, "r") as f:
        assert f.attrs["method"] == method and f.attrs["labels"] == "one-hot"
        hard, soft, ent = f["train/aux_hard"][()], f["train/aux_soft"][()], f["train/entropy"][()]
        assert set(f) == ({"train", "test"} if method == "human" else {"train"})
    assert np.array_equal(hard, want)
    assert np.array_equal(soft, np.eye(soft.shape[1], dtype=np.float32)[want]) and not ent.any()
    man = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert man["method"] == method and man["labels"] == "one-hot"
    assert man["generator"] is None and man["generators"] == [] and len(man["files"]) == 1
    report = verify(run, out, sample=64)
    assert report.passed, [c.reason for c in report.checks]


def test_baseline_export_as_shards_and_parquet_with_views(runs, tmp_path):
    pytest.importorskip("pyarrow")
    for fmt, out in (("wds", tmp_path / "shards"), ("parquet", tmp_path / "pq")):
        export_labels(runs["human"], out, fmt, views=2, split="test")
        report = verify(runs["human"], out, sample=32)
        assert report.passed, (fmt, [c.reason for c in report.checks])


def test_edited_baseline_labels_fail_rederivation(runs, tmp_path):
    from test_verify import reseal

    out = tmp_path / "labels.h5"
    export_labels(runs["random"], out, split="train")
    with h5py.File(out, "r+") as f:
        soft, hard = f["train/aux_soft"][()], f["train/aux_hard"][()]
        psi = json.loads(f.attrs["run_config"])["psi"]
        block = np.repeat(np.arange(len(psi)), psi)
        moved = 0
        for i in range(len(hard)):  # another class inside the same block: still a valid one-hot label
            others = np.flatnonzero((block == block[hard[i]]) & (np.arange(len(block)) != hard[i]))
            if len(others):
                soft[i] = 0
                soft[i, others[0]], hard[i] = 1, others[0]
                moved += 1
        f["train/aux_soft"][()] = soft
        f["train/aux_hard"][()] = hard
    assert moved
    reseal(out)
    report = verify(runs["random"], out, sample=64)
    checks = {c.name: c for c in report.checks}
    assert checks["integrity"].status == "pass", checks["integrity"].reason
    assert checks["rederivation"].status == "fail" and "random targets" in checks["rederivation"].reason


def test_baseline_export_refusals_are_one_line(runs, tmp_path):
    cases = [(runs["random"], {"generator_formats": "pt2", "split": "train"}, "no label generator"),
             (runs["random"], {}, "training split only; pass --split train"),
             (runs["kmeans"], {}, "training split only; pass --split train")]
    for run, kw, match in cases:
        with pytest.raises(AuxgenError, match=match) as e:
            export_labels(run, tmp_path / "x.h5", **kw)
        assert "\n" not in str(e.value)
        assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("damage, match", [
    ("missing", "has no targets.npy"), ("pickle", "not a numpy array file"), ("range", "int64 labels in"),
    ("link", "is a link"), ("fifo", "not a regular file")])
def test_a_kmeans_run_without_its_own_targets_is_refused_in_one_line(runs, tmp_path, damage, match):
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["kmeans"], run)
    targets = run / "targets.npy"
    good = np.load(targets)
    targets.unlink()
    if damage == "pickle":  # an object array: loading it would need pickle, which auxgen never allows
        np.save(targets, np.array([{"a": 1}] * len(good), dtype=object), allow_pickle=True)
    elif damage == "range":
        np.save(targets, good + 10_000)
    elif damage == "link":
        elsewhere = tmp_path / "elsewhere.npy"
        np.save(elsewhere, good)
        targets.symlink_to(elsewhere)
    elif damage == "fifo":
        os.mkfifo(targets)
    with pytest.raises(AuxgenError, match=match) as e:
        export_labels(run, tmp_path / "x.h5", split="train")
    assert "\n" not in str(e.value) and not (tmp_path / "x.h5").exists()
