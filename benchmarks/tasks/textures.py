"""Texture: 12 procedural textures at a random orientation, phase and scale, 3 primary classes of 4.

Fine class: the texture (stripes and checks at two periods, small and large dots, a grid, waves, a
zigzag, rings, fine noise, blobs), each at a random angle, phase and a period jittered by up to
15%, in a random hue over a random dark colour, with pixel noise. Primary class: a fixed mix of
unlike textures, so its fine labels split it into what looks alike.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ._common import SIZE, dark_background, hue_colour, noisy

TREE = (("p0", ("stripes-4", "checks-8", "dots-small", "rings")),
        ("p1", ("stripes-8", "dots-large", "noise-fine", "zigzag")),
        ("p2", ("checks-4", "grid", "waves", "blobs")))
FLIP = True


def _dots(u: np.ndarray, v: np.ndarray, period: float, radius: float) -> np.ndarray:
    du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
    return du * du + dv * dv < radius * radius


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Random values on a cells x cells grid, bilinearly upsampled to the image: blobs of about SIZE/cells."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255 > 0.5


def _mask(fine: str, rng: np.random.Generator) -> np.ndarray:
    """The texture's foreground as a SIZE x SIZE boolean mask, at a random angle, phase and scale."""
    a, j = rng.uniform(0, np.pi), rng.uniform(0.85, 1.15)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    u = (x * np.cos(a) + y * np.sin(a)) / j + rng.uniform(0, 16)
    v = (-x * np.sin(a) + y * np.cos(a)) / j + rng.uniform(0, 16)
    kind, _, n = fine.partition("-")
    if kind == "stripes":
        return np.mod(u, int(n)) < int(n) / 2
    if kind == "checks":
        return (np.floor(u / int(n)) + np.floor(v / int(n))) % 2 == 0
    if fine == "dots-small":
        return _dots(u, v, 7, 1.8)
    if fine == "dots-large":
        return _dots(u, v, 12, 4)
    if fine == "grid":
        return (np.mod(u, 8) < 2) | (np.mod(v, 8) < 2)
    if fine == "waves":
        return np.sin(2 * np.pi * (u + 2 * np.sin(2 * np.pi * v / 12)) / 6) > 0
    if fine == "zigzag":
        return np.sin(2 * np.pi * (u + 3 * np.abs(np.mod(v, 8) / 4 - 1)) / 7) > 0
    if fine == "rings":
        cx, cy = rng.uniform(-SIZE / 2, 1.5 * SIZE, 2)
        return np.mod(np.hypot(x - cx, y - cy) / j, 6) < 3
    if fine == "noise-fine":
        return np.kron(rng.random((SIZE // 2, SIZE // 2)) < 0.5, np.ones((2, 2), bool))
    return _smooth_noise(rng, 5)  # blobs


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """The texture in a random hue over a random dark colour."""
    mask = _mask(fine, rng)[..., None]
    fg, bg = np.array(hue_colour(rng.random(), rng)), np.array(dark_background(rng))
    return noisy(Image.fromarray(np.where(mask, fg, bg).astype(np.uint8)), rng, 12)
