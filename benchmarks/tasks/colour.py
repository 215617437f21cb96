"""Fine classes told apart by colour: 4 shapes x 4 colours, the primary class their parity.

Fine class: (colour, shape), 16 of them. Primary class: even | odd, (shape index + colour index)
mod 2, so each primary class holds every shape in two colours and every colour in two shapes:
neither shape nor colour alone tells the primary class, and inside a primary class pairs of fine
classes differ only by colour. Labels that ignore colour cannot find the fine classes. Objects at
a random size and position on a random dark background, with pixel noise; no rotation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ._common import SIZE, dark_background, hue_colour, noisy

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.62}
FINES = [(c, s) for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES)]
TREE = tuple((name, tuple(f"{c}-{s}" for c, s in FINES if (SHAPES.index(s) + list(COLOURS).index(c)) % 2 == k))
             for k, name in enumerate(("even", "odd")))
FLIP = True


def _shape(d: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, col: tuple[int, int, int]) -> None:
    t = max(2, r // 3)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    else:
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=col)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=col)


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """One object of the fine class's shape in its colour (hue jittered), anywhere on a dark background."""
    colour, shape = fine.split("-")
    img = Image.new("RGB", (SIZE, SIZE), dark_background(rng))
    r = int(rng.integers(5, 10))
    cx, cy = (int(rng.integers(r + 1, SIZE - r - 1)) for _ in range(2))
    _shape(ImageDraw.Draw(img), shape, cx, cy, r, hue_colour(COLOURS[colour] + rng.uniform(-0.03, 0.03), rng))
    return noisy(img, rng, 12)
