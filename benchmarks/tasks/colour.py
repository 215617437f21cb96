"""Fine classes told apart by colour: 4 primary classes of 3 shapes, each shape in 2 colours (psi 6).

Fine class: (shape, colour); the two fine classes of a shape differ only by colour, so labels that
ignore colour cannot find them. Primary class: a fixed group of three unlike shapes (both colours of
each). Upright shapes at a random size and position on a random dark background, a hue jittered
around the fine class's own, with pixel noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ._common import SIZE, dark_background, hue_colour, noisy, polygon
from .rotated import POINTS

HUES = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.62}
GROUPS = (("circle", "cross", "pentagon"), ("square", "ring", "arrow"), ("triangle", "star", "bar"),
          ("diamond", "half-disc", "tee"))
PAIRS = tuple(tuple(HUES)[i:i + 2] if i < 3 else ("blue", "red") for i in range(4))  # each shape's two colours
TREE = tuple((f"p{k}", tuple(f"{c}-{s}" for j, s in enumerate(shapes) for c in PAIRS[(k + j) % 4]))
             for k, shapes in enumerate(GROUPS))
FLIP = True
SHAPES = {**POINTS, "diamond": POINTS["square"] @ np.array([[.7, .7], [-.7, .7]]),
          "bar": np.array([[-1, -.35], [1, -.35], [1, .35], [-1, .35]])}


def _shape(d: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], r: float, col: tuple) -> None:
    box = [centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r]
    if shape == "circle":
        d.ellipse(box, fill=col)
    elif shape == "ring":
        d.ellipse(box, outline=col, width=max(2, int(r) // 3))
    else:
        d.polygon(polygon(SHAPES[shape], 0.0, r, centre), fill=col)


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """One upright shape in the fine class's colour (hue jittered), anywhere on a dark background."""
    colour, shape = fine.split("-", 1)
    img = Image.new("RGB", (SIZE, SIZE), dark_background(rng))
    r = float(rng.uniform(6, 11))
    centre = tuple(float(rng.uniform(r + 1, SIZE - r - 1)) for _ in range(2))
    _shape(ImageDraw.Draw(img), shape, centre, r, hue_colour(HUES[colour] + rng.uniform(-0.03, 0.03), rng))
    return noisy(img, rng, 12)
