"""Do auxgen's defaults train a user's own small image set? The digits written as an ImageFolder.

Writes scikit-learn's digits as PNG trees (ROOT/train/DIGIT/*.png and ROOT/test/DIGIT/*.png,
the same split as --dataset digits), then trains single-task and MAXL on them through the CLI
with only --epochs, --batch-size and the method given, everything else at its default, and
prints the test accuracy of each. Usage:

  python benchmarks/defaults_imagefolder.py --epochs 15 --batch-size 64 [--backbone cnn] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auxgen.compose import load_data  # noqa: E402
from auxgen.config import TrainConfig  # noqa: E402


def write_digits_tree(root: Path) -> tuple[Path, Path]:
    """The digits split of --dataset digits as two ImageFolder trees of 8x8 grey PNGs."""
    data = load_data(TrainConfig(dataset="digits").validate())
    for name, split in (("train", data.train), ("test", data.test)):
        for i, (img, y) in enumerate(zip(split.images, split.labels.tolist(), strict=True)):
            d = root / name / str(y)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy().astype(np.uint8)).save(d / f"{i:05d}.png")
    return root / "train", root / "test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--methods", default="single,maxl")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--extra", default="", help="more CLI options for every run, e.g. '--backbone cnn'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_root, test_root = write_digits_tree(Path(tmp) / "digits")
        for method in args.methods.split(","):
            accs = []
            for seed in range(args.seeds):
                out = Path(tmp) / f"{method}-{seed}"
                cmd = [sys.executable, "-m", "auxgen.cli", "train", "--dataset", "imagefolder", "--data-root",
                       str(train_root), "--test-root", str(test_root), "--epochs", str(args.epochs), "--batch-size",
                       str(args.batch_size), "--method", method, "--seed", str(seed), "--out", str(out), "--quiet",
                       *args.extra.split()]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True)
                s = json.loads((out / "summary.json").read_text())
                accs.append(s["final_test_acc"])
                print(f"{method} seed {seed}: test acc {100 * s['final_test_acc']:.2f}% "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            print(f"{method}: mean {100 * float(np.mean(accs)):.2f}% over {len(accs)} seeds; torch {torch.__version__}")


if __name__ == "__main__":
    main()
