"""The yardstick suite's image tasks: one module per task, one registry line per task.

Each module writes a two-level ImageFolder (ROOT/{train,test}/PRIMARY/FINE/*.png, 32x32) from a
seed, with what any install of auxgen has (PIL, numpy, scikit-learn's and matplotlib's sample
photographs and fonts): its TREE names the classes, its draw() makes one image. `make(name)`
writes a task's data on first use under runs/bench-data/NAME/ and returns its two trees;
benchmarks/label_quality.py trains on them (`--suite` runs every yardstick task). The calibration
(does training on the fine labels help single-task beyond the interval?) is in docs/yardstick.md;
`yardstick=False` marks a task where it did not.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from ._common import SIZE, write_split

BENCH_DATA = Path(__file__).resolve().parents[2] / "runs" / "bench-data"


@dataclasses.dataclass(frozen=True)
class Task:
    module: str          # the writer module under benchmarks/tasks
    per_class: int       # training images per fine class
    test_per_class: int  # test images per fine class
    epochs: int          # training epochs in the benchmark
    yardstick: bool = True  # False: the fine labels did not help beyond the interval at 10 seeds

    def writer(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    def shape(self) -> tuple[int, tuple[int, ...]]:
        """(primary classes, psi: fine classes of each primary class)."""
        tree = self.writer().TREE
        return len(tree), tuple(len(fines) for _, fines in tree)


TASKS: dict[str, Task] = {
    # not a yardstick: single-task is at the ceiling and the fine labels hurt a little (docs/yardstick.md)
    "colour": Task("colour", 20, 15, 40, yardstick=False),  # fine classes by colour; 4 primaries x psi 6
    "rotated": Task("rotated", 60, 40, 60),      # shape under rotation and scale, colour a nuisance; 4 x 2
    "textures": Task("textures", 25, 25, 30),    # texture at random orientation and phase; 3 x 4
    "photos": Task("photos", 18, 18, 30),        # crops of real photographs; 6 x 3
    # not a yardstick: the fine labels do not help here (docs/yardstick.md); kept for "do no harm"
    "letters": Task("letters", 15, 15, 40, yardstick=False),  # greyscale letters, held-out fonts; 10 x 2
    "symbols": Task("symbols", 40, 20, 40),      # 16 pictographs, any rotation, colour a nuisance; 2 x 8
}


def make(name: str, root: Path | None = None, per_class: int | None = None,
         test_per_class: int | None = None) -> tuple[Path, Path]:
    """The task's train and test trees under ROOT (default runs/bench-data/NAME), written on first use."""
    task = TASKS[name]
    root = root or BENCH_DATA / name
    root.mkdir(parents=True, exist_ok=True)
    mod = task.writer()
    return (write_split(root / "train", mod.TREE, per_class or task.per_class, mod.draw, "train"),
            write_split(root / "test", mod.TREE, test_per_class or task.test_per_class, mod.draw, "test"))


def train_options(name: str, root: Path | None = None) -> dict[str, Any]:
    """auxgen training options of the task: its two trees, two-level labels, crop augmentation, flips if
    the task's classes survive a mirror."""
    root = root or BENCH_DATA / name
    return {"dataset": "imagefolder", "data_root": str(root / "train"), "test_root": str(root / "test"),
            "hierarchy_depth": 2, "image_size": SIZE, "augment": "on", "flip": TASKS[name].writer().FLIP}
