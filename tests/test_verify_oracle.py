"""verify --retrain against the data's own fine labels (the oracle), where the data has them."""

import pytest
from conftest import tiny_config

from auxgen.export import export_labels
from auxgen.trainer import train
from auxgen.verify import verify


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    train(tiny_config(primary_groups=5, epochs=1), root / "run", show=False)
    export_labels(root / "run", root / "labels", "wds", images=False)
    return root


def test_fine_labels_are_a_fourth_arm_that_never_fails_the_check(grouped):
    report = verify(grouped / "run", grouped / "labels", retrain_epochs=1, seeds=2)
    q = next(c for c in report.checks if c.name == "quality")
    f = q.figures
    assert set(f["acc"]) == {"exported", "single", "random", "human"}
    diffs = [a - b for a, b in zip(f["acc"]["human"], f["acc"]["single"], strict=True)]
    assert f["oracle_gain"] == pytest.approx(sum(diffs) / 2)
    assert f["gain_vs_human"] == pytest.approx(f["acc_exported"] - f["acc_human"])
    assert set(f["verdicts"]) == {"single", "random"}  # the oracle informs; it does not decide pass or fail
    assert (q.status == "pass") == (f["verdicts"]["random"] == "helps" and f["verdicts"]["single"] != "hurts")
    assert "fine labels" in q.reason
    assert f["history"]["human"] != f["history"]["random"]  # the fine labels are not the random ones


def test_no_fine_labels_no_fourth_arm(tiny_run, tmp_path):
    export_labels(tiny_run, tmp_path / "labels", "wds", images=False)
    q = next(c for c in verify(tiny_run, tmp_path / "labels", retrain_epochs=1, seeds=1).checks
             if c.name == "quality")
    assert "human" not in q.figures["acc"] and "oracle_gain" not in q.figures
