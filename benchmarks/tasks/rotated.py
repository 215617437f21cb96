"""Shape under rotation and scale, colour a nuisance: 8 shapes, 4 primary classes of 2.

Fine class: the shape (triangle, square, pentagon, star, cross, arrow, tee, half-disc), drawn at a
random rotation (any angle), scale (half to nearly the whole image) and position, in a random
hue on a random dark background, with pixel noise. Primary class: a fixed pairing of unlike shapes,
so a primary class is two shapes and its fine labels split it. Every shape is mirror-symmetric, so
horizontal flips keep the class.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ._common import SIZE, dark_background, hue_colour, noisy, polygon


def _regular(n: int, inner: float | None = None) -> np.ndarray:
    """A regular n-gon (or an n-pointed star when `inner` is the inner radius) of radius 1, pointing up."""
    k = 2 * n if inner else n
    a = -np.pi / 2 + np.arange(k) * 2 * np.pi / k
    r = np.where(np.arange(k) % 2 == 1, inner, 1.0) if inner else np.ones(k)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


POINTS = {
    "triangle": _regular(3), "square": _regular(4), "pentagon": _regular(5), "star": _regular(5, 0.42),
    "cross": np.array([[-.3, -1], [.3, -1], [.3, -.3], [1, -.3], [1, .3], [.3, .3], [.3, 1], [-.3, 1], [-.3, .3],
                       [-1, .3], [-1, -.3], [-.3, -.3]]),
    "arrow": np.array([[0, -1], [.8, -.1], [.3, -.1], [.3, 1], [-.3, 1], [-.3, -.1], [-.8, -.1]]),
    "tee": np.array([[-1, -1], [1, -1], [1, -.45], [.28, -.45], [.28, 1], [-.28, 1], [-.28, -.45], [-1, -.45]]),
    "half-disc": np.stack([np.cos(np.linspace(0, np.pi, 12)), -np.sin(np.linspace(0, np.pi, 12)) + .5], 1),
}
TREE = (("p0", ("triangle", "cross")), ("p1", ("square", "star")), ("p2", ("pentagon", "arrow")),
        ("p3", ("half-disc", "tee")))
FLIP = True


def draw(fine: str, rng: np.random.Generator, split: str) -> Image.Image:
    """One shape at a random angle, scale and place, in a random colour on a random dark background."""
    img = Image.new("RGB", (SIZE, SIZE), dark_background(rng))
    scale = float(rng.uniform(0.25, 0.45)) * SIZE
    centre = tuple(float(rng.uniform(scale, SIZE - scale)) for _ in range(2))
    pts = polygon(POINTS[fine], float(rng.uniform(0, 2 * np.pi)), scale, centre)
    ImageDraw.Draw(img).polygon(pts, fill=hue_colour(rng.random(), rng))
    return noisy(img, rng, 12)
