"""Crops of real photographs: 3 photos cut into 6 regions each, 6 primary classes of 3 regions.

The photographs any install has: scikit-learn's two sample images (china.jpg, flower.jpg) and
matplotlib's grace_hopper.jpg. Each is resized (landscape 192x128, portrait 128x192) and cut
into a 2x3 (3x2) grid of 64x64 cells. Fine class: a cell. An image is a square crop of 28 to 44
pixels centred anywhere in its cell (so crops reach into the neighbouring cells), scaled to 32x32,
with a random brightness and pixel noise. Primary class: one cell of each photo, in a fixed
pairing, so a primary class is three unlike scenes and its fine labels split it.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageEnhance

from ._common import SIZE, noisy

PHOTOS = ("china", "flower", "hopper")
CELL = 64
CELLS = 6
TREE = tuple((f"p{k}", tuple(f"{p}-{(k + 2 * i) % CELLS}" for i, p in enumerate(PHOTOS))) for k in range(CELLS))
FLIP = True


@cache
def photo(name: str) -> Image.Image:
    """The named photograph, resized so that its cells are CELL x CELL."""
    if name == "hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
            return img.convert("RGB").resize((2 * CELL, 3 * CELL), Image.BILINEAR)
    from sklearn.datasets import load_sample_images

    arr = load_sample_images().images[PHOTOS.index(name)]  # china.jpg, flower.jpg, in that order
    return Image.fromarray(arr).resize((3 * CELL, 2 * CELL), Image.BILINEAR)


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """A jittered square crop of the fine class's cell, at a random scale and brightness."""
    name, cell = fine.rsplit("-", 1)
    img = photo(name)
    cols = img.width // CELL
    row, col = divmod(int(cell), cols)
    side = int(rng.integers(28, 45))
    cx, cy = ((c + rng.random()) * CELL for c in (col, row))
    x0 = int(np.clip(cx - side / 2, 0, img.width - side))
    y0 = int(np.clip(cy - side / 2, 0, img.height - side))
    crop = img.crop((x0, y0, x0 + side, y0 + side)).resize((SIZE, SIZE), Image.BILINEAR)
    return noisy(ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.75, 1.25))), rng, 8)
