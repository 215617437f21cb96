"""A harder offline image task for the label-quality yardstick: a two-level ImageFolder of shapes.

Coarse (primary) round | angular; fine (the human auxiliary labels) circle, ring, ellipse |
square, triangle, cross. Each image has a random hue, saturation and brightness, a random dark
background, a random size and position, and pixel noise: colour is a nuisance that carries no
class information, the failure mode of labels that group by colour (../shared/cases/shapes_tree.py
shows it on a user's folder). Drawn with PIL from a seed, written as PNG in ImageFolder layout,
so it goes through auxgen's real loader; nothing is downloaded.

    python benchmarks/shapes_task.py OUT [--per-class 40] [--test-per-class 50] [--size 32]
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TREE = (("round", ("circle", "ring", "ellipse")), ("angular", ("square", "triangle", "cross")))


def draw(shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One image of `shape`: random colour, background, scale, offset and noise."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
    d = ImageDraw.Draw(img)
    col = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.random(), 0.5 + 0.5 * rng.random(),
                                                         0.6 + 0.4 * rng.random()))
    r = int(size * (0.2 + 0.12 * rng.random()))
    cx, cy = (int(size / 2 + rng.integers(-size // 8, size // 8 + 1)) for _ in range(2))
    box = [cx - r, cy - r, cx + r, cy + r]
    t = max(2, r // 3)
    if shape == "circle":
        d.ellipse(box, fill=col)
    elif shape == "ring":
        d.ellipse(box, outline=col, width=t)
    elif shape == "ellipse":
        d.ellipse([cx - r, cy - r // 2, cx + r, cy + r // 2], fill=col)
    elif shape == "square":
        d.rectangle(box, fill=col)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    elif shape == "cross":
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=col)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=col)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_tree(root: Path, per_class: int, seed: int, size: int = 32) -> Path:
    """ROOT/COARSE/FINE/IMG.png, `per_class` images per fine class; skipped when ROOT/.complete exists."""
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    for coarse, fines in TREE:
        for fine in fines:
            (root / coarse / fine).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw(fine, rng, size).save(root / coarse / fine / f"{fine}_{i:03d}.png")
    done.write_text("")
    return root


def make_task(out: Path, per_class: int = 40, test_per_class: int = 50, size: int = 32) -> tuple[Path, Path]:
    """The train and test trees (different seeds, so no image is in both)."""
    return (write_tree(out / "train", per_class, 1, size), write_tree(out / "test", test_per_class, 2, size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    print(*make_task(a.out, a.per_class, a.test_per_class, a.size))


if __name__ == "__main__":
    main()
