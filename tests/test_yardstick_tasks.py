"""The yardstick suite's image tasks (benchmarks/tasks): deterministic, the claimed tree, written once."""

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxgen.errors import AuxgenError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import tasks as yardstick  # noqa: E402
from benchmarks.tasks import _common  # noqa: E402

NAMES = sorted(yardstick.TASKS)


def _listing(root: Path) -> dict[str, str]:
    """Every file under ROOT (relative path) -> the sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", NAMES)
def test_writer_is_deterministic_and_writes_the_claimed_tree(tmp_path, name):
    train, test = yardstick.make(name, tmp_path / "a", per_class=2, test_per_class=1)
    again = yardstick.make(name, tmp_path / "b", per_class=2, test_per_class=1)
    assert _listing(train) == _listing(again[0]) and _listing(test) == _listing(again[1])
    primaries, psi = yardstick.TASKS[name].shape()
    for tree, n in ((train, 2), (test, 1)):
        folders = sorted(p for p in tree.iterdir() if p.is_dir())
        assert len(folders) == primaries
        assert [len([f for f in p.iterdir() if f.is_dir()]) for p in folders] == list(psi)
        assert all(len(list(f.glob("*.png"))) == n for p in folders for f in p.iterdir())
    imgs = [np.asarray(Image.open(p)) for p in sorted(train.rglob("*.png"))]
    assert all(a.shape[:2] == (32, 32) for a in imgs)
    assert all(a.std() > 5 for a in imgs)  # something drawn, not a flat colour
    assert len({a.tobytes() for a in imgs}) == len(imgs)  # every image its own draw
    assert _listing(train) != _listing(test)  # the test split is drawn from another seed


def test_the_suite_spans_the_hierarchy_shapes_the_issue_asks_for():
    shapes = [t.shape() for t in yardstick.TASKS.values()]
    assert min(p for p, _ in shapes) == 2 and max(p for p, _ in shapes) == 10
    assert min(min(psi) for _, psi in shapes) == 2 and max(max(psi) for _, psi in shapes) == 8


def test_written_once_a_second_call_keeps_the_files(tmp_path):
    train, test = yardstick.make("colour", tmp_path, per_class=1, test_per_class=1)
    stamps = {p: p.stat().st_mtime_ns for p in train.rglob("*")}
    assert yardstick.make("colour", tmp_path, per_class=3, test_per_class=3) == (train, test)
    assert {p: p.stat().st_mtime_ns for p in train.rglob("*")} == stamps


def test_an_interrupted_write_leaves_no_split_and_an_incomplete_one_is_refused(tmp_path):
    calls = []

    def draw(fine, rng, split):
        calls.append(fine)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return Image.new("RGB", (32, 32))

    tree = (("a", ("x", "y")), ("b", ("z", "w")))
    with pytest.raises(KeyboardInterrupt):
        _common.write_split(tmp_path / "train", tree, 1, draw, "train")
    assert not (tmp_path / "train").exists()  # only a .partial-* folder beside it
    (tmp_path / "test" / "mine").mkdir(parents=True)
    with pytest.raises(AuxgenError, match="not a complete yardstick split"):
        _common.write_split(tmp_path / "test", tree, 1, draw, "test")
    assert (tmp_path / "test" / "mine").is_dir()  # what was there is kept


def test_letters_test_fonts_are_held_out():
    from benchmarks.tasks import letters

    assert not set(letters.FONTS["train"]) & set(letters.FONTS["test"])


def test_auxgen_reads_a_task_as_its_two_level_hierarchy(tmp_path):
    from auxgen.compose import hierarchy_for, load_data
    from auxgen.config import TrainConfig

    yardstick.make("rotated", tmp_path, per_class=2, test_per_class=1)
    cfg = TrainConfig(**yardstick.train_options("rotated", tmp_path), backbone="cnn", device="cpu").validate()
    data = load_data(cfg)
    hier, _ = hierarchy_for(cfg, data)
    assert hier.psi == yardstick.TASKS["rotated"].shape()[1] and len(data.train) == 16 and len(data.test) == 8
    assert data.train.images.shape[1:] == (3, 32, 32)


def _bench():
    spec = importlib.util.spec_from_file_location("label_quality", ROOT / "benchmarks" / "label_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmark_knows_every_suite_task():
    bench = _bench()
    assert bench.SUITE[:2] == ["g2-10", "digits-rgb"] and set(yardstick.TASKS) <= set(bench.SUITE)
    for name in yardstick.TASKS:
        opts, frac, epochs = bench.TASKS[name]
        assert opts["data_root"].endswith(f"bench-data/{name}/train") and frac == 1.0
        assert epochs == yardstick.TASKS[name].epochs


def test_an_unknown_task_is_one_line():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_quality.py"), "--tasks", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown task nope" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", NAMES)
def test_the_registry_says_what_the_committed_calibration_found(name):
    """yardstick=True exactly where the committed 10-seed rows show the fine labels helping beyond the interval."""
    import json

    rows = json.loads((ROOT / "docs" / "label_quality" / f"yardstick-{name}.json").read_text())["rows"]
    assert len({r["seed"] for r in rows if r["task"] == name and r["method"] == "human"}) >= 10
    assert _bench().qualifies(rows, name) == yardstick.TASKS[name].yardstick
