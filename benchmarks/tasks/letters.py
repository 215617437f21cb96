"""Greyscale letters from held-out fonts: 20 capital letters, 10 primary classes of 2.

Fine class: the letter. Training images are drawn in eight DejaVu faces that matplotlib ships
(Sans, Serif, Mono, upright and bold, and two slanted ones); test images in four faces no training
image uses (Serif Italic, Serif Bold Italic, Sans Bold Oblique, Mono Oblique). Each letter at a
random size, offset and small rotation, a random light grey on a random dark grey, with noise;
saved as greyscale. Primary class: a fixed pair of unlike letters. No flips: a mirrored letter is
another glyph.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._common import SIZE, noisy

PAIRS = ("AN", "BT", "CK", "DV", "EU", "FS", "GM", "HR", "JY", "LP")
TREE = tuple((f"p{k}", tuple(pair)) for k, pair in enumerate(PAIRS))
FONTS = {"train": ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSansMono",
                   "DejaVuSansMono-Bold", "DejaVuSans-Oblique", "DejaVuSansMono-BoldOblique"),
         "test": ("DejaVuSerif-Italic", "DejaVuSerif-BoldItalic", "DejaVuSans-BoldOblique", "DejaVuSansMono-Oblique")}
FLIP = False


@cache
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"), size)


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """The letter in a random face of the split, size, offset and tilt; light grey on dark grey."""
    faces = FONTS[split]
    face = faces[int(rng.integers(len(faces)))]
    bg, fg = int(rng.integers(0, 90)), int(rng.integers(160, 256))
    img = Image.new("L", (SIZE, SIZE), bg)
    at = tuple(SIZE / 2 + rng.uniform(-3, 3, 2))
    ImageDraw.Draw(img).text(at, fine, fill=fg, font=font(face, int(rng.integers(16, 25))), anchor="mm")
    img = img.rotate(float(rng.uniform(-12, 12)), Image.BILINEAR, fillcolor=bg)
    return noisy(img, rng, 12)
