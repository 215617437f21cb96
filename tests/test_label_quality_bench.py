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


def test_digit_images_task_is_a_two_level_folder_of_the_digits_splits(tmp_path):
    import sys

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from digit_images import make_task

    from auxgen.compose import hierarchy_for, load_data
    from auxgen.config import TrainConfig

    train_root, test_root = make_task(tmp_path / "d", per_class=3)
    assert (train_root / ".complete").is_file() and (test_root / ".complete").is_file()
    digit_test = load_data(TrainConfig(dataset="digits", device="cpu").validate()).test
    cfg = TrainConfig(dataset="imagefolder", data_root=str(train_root), test_root=str(test_root), hierarchy_depth=2,
                      image_size=32, backbone="cnn", device="cpu").validate()
    data = load_data(cfg)
    hier, _ = hierarchy_for(cfg, data)
    assert len(data.train) == 30 and len(data.test) == len(digit_test)
    assert data.train.images.shape[1:] == (3, 32, 32) and hier.psi == (5, 5)
    # the primary class is the digit's group, the fine label the digit; every digit three times in training
    digits = sorted(int(name[-1]) for name in data.fine_names)  # e.g. "low/d3"
    assert digits == list(range(10))
    digit_of = [int(name[-1]) for name in data.fine_names]
    groups = [data.class_names[int(c)] for c in data.train.labels]
    assert groups == ["low" if digit_of[int(f)] < 5 else "high" for f in data.train.fine]
    counts = np.bincount(data.train.fine.numpy(), minlength=10)
    assert counts.tolist() == [3] * 10
    assert sorted(p.parent.name for p in (train_root / "low").glob("*/*.png"))[0] == "d0"
    assert {p.parent.name for p in (train_root / "high").glob("*/*.png")} == {f"d{i}" for i in range(5, 10)}
    img = np.asarray(Image.open(next((train_root / "low" / "d0").glob("*.png"))))
    assert img.shape == (32, 32, 3) and img.std() > 10  # a drawn digit, not a flat colour
    again = make_task(tmp_path / "d", per_class=3)  # written once: a second call keeps the files
    assert again == (train_root, test_root)


def test_the_generator_alone_diagnostic_runs_and_reports_nmi(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("generator_alone", ROOT / "benchmarks" / "generator_alone.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr("sys.argv", ["generator_alone.py", "--task", "g2-10", "--match", "shape", "--gen-input",
                                     "image", "--steps", "100"])
    mod.main()
    out = capsys.readouterr().out
    assert "144 training images" in out and "neighbours by shape share the fine label in" in out
    nmi = [float(line.split("NMI")[1].split()[0]) for line in out.splitlines() if line.startswith("step")]
    # near-uniform labels at the start say nothing of the digits; on greyscale digits 100 steps find them (0.61)
    assert len(nmi) == 2 and nmi[0] < 0.05 and 0.3 < nmi[1] <= 1.0


def test_the_defaults_are_the_variants_whose_rows_stand_for_them(bench):
    """docs and the demo's summary quote maxl:gin-aligned's rows (digits-rgb) and maxl:nb-cons-nometa-every2's
    (g2-10) as today's defaults: the defaults must resolve to those options on those tasks' images."""
    import dataclasses

    from auxgen.compose import generator_sees_shape, pair_colour_on, thumbnail_match

    for task, variant, channels in (("digits-rgb", "gin-aligned", 3), ("g2-10", "nb-cons-nometa-every2", 1)):
        default, pinned = bench._config(task, "maxl", 0, 0), bench._config(task, f"maxl:{variant}", 0, 0)
        resolved = {"gen_input": None, "neighbour_match": None, "pair_colour": None}
        assert {k: v for k, v in dataclasses.asdict(default).items() if k not in resolved} == \
            {k: v for k, v in dataclasses.asdict(pinned).items() if k not in resolved}
        assert generator_sees_shape(default, channels) == generator_sees_shape(pinned, channels)
        # on greyscale, shape thumbnails are the pixels' exactly (test_objective_terms), so either name is the same
        same = {"shape": "pixels"} if channels == 1 else {}
        assert same.get(thumbnail_match(default, channels), thumbnail_match(default, channels)) == \
            same.get(thumbnail_match(pinned, channels), thumbnail_match(pinned, channels))
        assert pair_colour_on(default, channels) == pair_colour_on(pinned, channels)
