"""What every yardstick writer shares: the tree layout, the seeds, pixel noise, and writing a split once.

A writer module defines TREE (primary class -> its fine classes, in order) and
draw(fine, rng, split) -> a 32x32 PIL image. write_split draws every image of a split from one
seeded generator, in tree order, into a sibling folder and renames it into place when complete, so
a split folder either holds the whole split or does not exist (an interrupted write leaves only a
`.partial-*` folder beside it).
"""

from __future__ import annotations

import colorsys
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from auxgen.errors import AuxgenError

SIZE = 32  # every yardstick image is SIZE x SIZE
SEEDS = {"train": 1, "test": 2}  # different seeds: no drawn image is in both splits
Tree = tuple[tuple[str, tuple[str, ...]], ...]
Draw = Callable[[str, np.random.Generator, str], Image.Image]


def write_split(root: Path, tree: Tree, per_class: int, draw: Draw, split: str) -> Path:
    """ROOT/PRIMARY/FINE/FINE_III.png, `per_class` images per fine class; a complete ROOT is kept as it is."""
    if (root / ".complete").is_file():
        return root
    if root.exists():
        raise AuxgenError(f"{root} exists but is not a complete yardstick split (no .complete); delete it, run again")
    tmp = root.with_name(f".partial-{root.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(SEEDS[split])
    for primary, fines in tree:
        for fine in fines:
            folder = tmp / primary / fine
            folder.mkdir(parents=True)
            for i in range(per_class):
                draw(fine, rng, split).save(folder / f"{fine}_{i:03d}.png")
    (tmp / ".complete").write_text("")
    os.replace(tmp, root)
    return root


def noisy(img: Image.Image, rng: np.random.Generator, amp: int) -> Image.Image:
    """Uniform pixel noise of +-amp on every channel, clipped to 0..255."""
    arr = np.asarray(img).astype(np.int16)
    arr = arr + rng.integers(-amp, amp + 1, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), img.mode)


def hue_colour(hue: float, rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated, bright RGB colour of `hue` (0..1) with random saturation and value."""
    rgb = colorsys.hsv_to_rgb(hue % 1.0, 0.6 + 0.4 * rng.random(), 0.7 + 0.3 * rng.random())
    return tuple(int(255 * c) for c in rgb)


def dark_background(rng: np.random.Generator, top: int = 100) -> tuple[int, int, int]:
    """A random dark RGB colour (every channel below `top`): any hue, never as bright as an object."""
    return tuple(int(v) for v in rng.integers(0, top, 3))


def polygon(points: np.ndarray, angle: float, scale: float, centre: tuple[float, float]) -> list[tuple[float, float]]:
    """Unit-square polygon points (N x 2) rotated by `angle` radians, scaled and moved to `centre`."""
    c, s = np.cos(angle), np.sin(angle)
    xy = points @ np.array([[c, s], [-s, c]]) * scale + np.asarray(centre)
    return [(float(x), float(y)) for x, y in xy]
