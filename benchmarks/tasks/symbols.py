"""Many fine classes in few primary ones: 16 pictographs of DejaVu Sans, 2 primary classes of 8.

Fine class: the symbol (spade, heart, star, sun, plane, anchor, knight, snowflake | club, diamond,
note, umbrella, scissors, yin-yang, shamrock, flower), drawn from the font matplotlib ships at a
random size, offset and rotation (any angle), in a random hue on a random dark background, with
pixel noise: colour is a nuisance. Primary class: a fixed split of the sixteen into two unlike
halves, so each primary class is eight shapes and its fine labels split it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ._common import SIZE, dark_background, hue_colour, noisy
from .letters import font

GLYPHS = {"spade": "\u2660", "heart": "\u2665", "star": "\u2605", "sun": "\u2600", "plane": "\u2708",
          "anchor": "\u2693", "knight": "\u265e", "snowflake": "\u2744", "club": "\u2663", "diamond": "\u2666",
          "note": "\u266a", "umbrella": "\u2602", "scissors": "\u2702", "yin-yang": "\u262f", "shamrock": "\u2618",
          "flower": "\u273f"}
TREE = (("p0", tuple(GLYPHS)[:8]), ("p1", tuple(GLYPHS)[8:]))
FLIP = False  # a mirrored knight or note is not the training glyph


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """The symbol at a random size, offset and angle, in a random colour on a random dark background."""
    bg = dark_background(rng)
    img = Image.new("RGB", (SIZE, SIZE), bg)
    at = tuple(SIZE / 2 + rng.uniform(-3, 3, 2))
    ImageDraw.Draw(img).text(at, GLYPHS[fine], fill=hue_colour(rng.random(), rng),
                             font=font("DejaVuSans", int(rng.integers(18, 27))), anchor="mm")
    return noisy(img.rotate(float(rng.uniform(0, 360)), Image.BILINEAR, fillcolor=bg), rng, 12)
