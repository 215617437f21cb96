"""A harder offline image task for the label-quality yardstick: scikit-learn's digits as 32x32 colour images.

Coarse (primary) 0-4 | 5-9; fine (the human auxiliary labels) the digit, the g2 tasks' design.
Each 8x8 digit is scaled to a random size (20 to 28 pixels), placed at a random offset, drawn in
a random hue on a random background colour, with pixel noise: colour, size and position are
nuisances that carry no class information, where the 8x8 greyscale digits have none. The
training tree takes `per_class` images of each digit from auxgen's own digits training split,
the test tree every image of its test split, so no digit image is in both. Written as PNG in
ImageFolder layout, so it goes through auxgen's real loader; nothing is downloaded.

    python benchmarks/digit_images.py OUT [--per-class 40]
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auxgen.compose import load_data  # noqa: E402
from auxgen.config import TrainConfig  # noqa: E402

GROUPS = ("low", "high")  # 0-4 | 5-9


def draw(digit: np.ndarray, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One 8x8 uint8 digit as a size x size RGB image: random scale, offset, colours and noise."""
    side = int(rng.integers(size * 5 // 8, size * 7 // 8 + 1))
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.BILINEAR), np.float32) / 255.0
    x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    alpha = np.zeros((size, size, 1), np.float32)
    alpha[y:y + side, x:x + side, 0] = ink
    fg = np.array(colorsys.hsv_to_rgb(rng.random(), 0.5 + 0.5 * rng.random(), 0.6 + 0.4 * rng.random())) * 255
    bg = rng.integers(0, 80, 3).astype(np.float32)
    arr = alpha * fg + (1 - alpha) * bg + rng.integers(-8, 9, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def write_tree(root: Path, images: np.ndarray, labels: np.ndarray, seed: int) -> Path:
    """ROOT/GROUP/dDIGIT/IMG.png for every (image, label); skipped when ROOT/.complete exists."""
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    for i, (img, d) in enumerate(zip(images, labels, strict=True)):
        folder = root / GROUPS[int(d) // 5] / f"d{int(d)}"
        folder.mkdir(parents=True, exist_ok=True)
        draw(img, rng).save(folder / f"{i:04d}.png")
    done.write_text("")
    return root


def make_task(out: Path, per_class: int = 40) -> tuple[Path, Path]:
    """The train tree (`per_class` images of each digit, seeded) and the test tree (the whole test split)."""
    data = load_data(TrainConfig(dataset="digits", device="cpu").validate())  # auxgen's own split of the digits
    train, test = data.train, data.test
    tr_img, tr_y = train.images[:, 0].numpy(), train.labels.numpy()
    pick = np.random.default_rng(0).permutation(len(tr_y))
    rows = np.sort(np.concatenate([pick[tr_y[pick] == d][:per_class] for d in range(10)]))
    return (write_tree(out / "train", tr_img[rows], tr_y[rows], 1),
            write_tree(out / "test", test.images[:, 0].numpy(), test.labels.numpy(), 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=40)
    a = ap.parse_args()
    print(*make_task(a.out, a.per_class))


if __name__ == "__main__":
    main()
