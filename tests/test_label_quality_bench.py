"""The label-quality yardstick runs end to end at tiny size and measures what it says."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("label_quality", ROOT / "benchmarks" / "label_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_and_table(bench):
    rows = [bench.run_one("g2-small", m, s, 2) for m in ("single", "human", "maxl") for s in (0, 1)]
    human = [r for r in rows if r["method"] == "human"]
    assert all(r["nmi"] == pytest.approx(1.0) and r["sample_frac"] == 0.0 for r in human)  # the digits themselves
    maxl = [r for r in rows if r["method"] == "maxl"]
    for r in maxl:
        assert 0 <= r["acc"] <= 1 and 0 <= r["frozen"] <= 1 and 0 <= r["sample_frac"] <= 1 and -1 <= r["ari"] <= 1
    text = bench.table(rows) + bench.comparisons(rows)
    assert "| g2-small | maxl | 2 |" in text and "| g2-small | maxl | frozen |" in text
    gain, _ = bench.oracle_gain(rows, "g2-small")  # human - single, paired by seed
    acc = {(r["method"], r["seed"]): r["acc"] for r in rows}
    assert gain == pytest.approx(sum(acc["human", s] - acc["single", s] for s in (0, 1)) / 2)
    assert "| g2-small | 2 |" in bench.calibration(rows)


def test_nmi_is_within_each_primary_class(bench):
    import numpy as np

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fine = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    # the hard labels split each class exactly as the fine labels do, under other names: NMI 1
    assert bench._nmi_ari(np.array([5, 5, 6, 6, 9, 9, 8, 8]), fine, y) == pytest.approx((1.0, 1.0))
    # labels constant inside each class carry nothing about the fine labels there
    assert bench._nmi_ari(np.array([5, 5, 5, 5, 9, 9, 9, 9]), fine, y)[0] == pytest.approx(0.0)
