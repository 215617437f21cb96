"""Framework-agnostic batches from an auxgen HDF5 export: numpy arrays only (h5py + numpy).

    from pipelines.numpy_reader import LabelFile
    labels = LabelFile("labels/c100.h5")
    for batch in labels.batches("train", batch_size=256, shuffle=True, seed=epoch):
        x = my_images[batch["index"]]              # your images, in the split's order
        step(x, batch["primary"], batch["aux_soft"])   # jax.numpy / tf.convert_to_tensor / ...

Run as a script to print what a file holds, or to fit a small numpy softmax model on it:
    python pipelines/numpy_reader.py labels/c100.h5 [--images train_images.npy | --image-root photos] [--lr 2.0]
(--image-root: an ImageFolder export's folder; its images are decoded as auxgen did, in split order)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script (python pipelines/numpy_reader.py): import pipelines from the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import _common  # noqa: E402
from pipelines._common import apply_view  # noqa: E402, F401  (the view rule: apply_view(image, (dy, dx, flip), pad))

FIELDS = ("index", "primary", "aux_soft", "aux_hard", "entropy")


class LabelFile:
    """An auxgen HDF5 export; its label arrays are read once into memory (they are small next to images)."""

    def __init__(self, path: str) -> None:
        with _common.open_export(path) as f:
            self.attrs: dict[str, Any] = _common.read_attrs(f)
            self.splits: dict[str, dict[str, np.ndarray]] = {}
            for name in f:
                arrays = _common.read_split(f, name, (*FIELDS, "views"))
                arrays["keys"] = np.array(arrays["keys"], dtype=object)
                self.splits[name] = arrays
        self.psi = [int(p) for p in self.attrs["psi"]]
        self.num_primary, self.num_aux = int(self.attrs["num_primary"]), int(self.attrs["num_aux"])
        self.pad = int(self.attrs.get("pad", 0))

    def __len__(self) -> int:
        return sum(len(s["index"]) for s in self.splits.values())

    def folder_images(self, root: str, split: str = "train") -> np.ndarray:
        """The split's images in split order (what batch["index"] indexes), decoded from the image files under
        `root` (the ImageFolder auxgen read; for a --test-root run's test split, that root) exactly as auxgen
        decoded them: fitted to the export's `image_shape`. uint8 [N, C, H, W]."""
        s = self.splits[split]
        return _common.folder_images(root, self.attrs, s["keys"], s["index"])

    def batches(self, split: str = "train", batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, shard: tuple[int, int] = (0, 1), view: str = "random"
                ) -> Iterator[dict[str, np.ndarray]]:
        """Dicts of numpy arrays: keys, index, primary, aux_soft [B, K] (float32), aux_hard, entropy.

        shard=(rank, world) gives each host a disjoint part (every world-th row after shuffling with
        the shared seed). With a --views export, view="random" picks one stored view per sample
        (its (dy, dx, flip) in batch["view"]), view="all" keeps [B, V, K].
        """
        if split not in self.splits:
            raise KeyError(f"no split {split!r} in the file (has {', '.join(self.splits)})")
        s = self.splits[split]
        n = len(s["index"])
        rng = np.random.default_rng(seed)
        order = rng.permutation(n) if shuffle else np.arange(n)
        rank, world = shard
        order = order[rank::world]
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            rows = order[start:start + batch_size]
            batch = {k: v[rows] for k, v in s.items() if k != "views"}
            batch["aux_soft"] = batch["aux_soft"].astype(np.float32)
            if "views" in s and view == "random":
                v = rng.integers(0, s["views"].shape[1], len(rows))
                batch["view"] = s["views"][rows, v]
                for k in ("aux_soft", "aux_hard", "entropy"):
                    batch[k] = batch[k][np.arange(len(rows)), v]
            elif "views" in s:
                batch["views"] = s["views"][rows]
            yield batch


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class SoftmaxHeads:
    """Two linear softmax heads in plain numpy, primary (P classes) and auxiliary (K), on uint8 images.

    Pixels are standardised with the training images' own mean and std and scaled by 1/sqrt(D), so a
    feature vector has about unit norm whatever the image size or channels: a step of size `lr` then
    cannot blow up (on raw 0..1 RGB pixels, |x|^2 grows with D and lr 0.5 diverged).
    """

    def __init__(self, images: np.ndarray, num_primary: int, num_aux: int, seed: int = 0) -> None:
        x = images.reshape(len(images), -1).astype(np.float32)
        self.mean, self.std, self.dim = float(x.mean()), float(x.std()) or 1.0, x.shape[1]
        rng = np.random.default_rng(seed)
        self.w_p = rng.normal(0, 0.01, (self.dim, num_primary)).astype(np.float32)
        self.w_a = rng.normal(0, 0.01, (self.dim, num_aux)).astype(np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float32)
        return (x - self.mean) / (self.std * np.sqrt(self.dim))

    def step(self, images: np.ndarray, primary: np.ndarray, aux_soft: np.ndarray, lr: float) -> float:
        """One gradient step on cross-entropy of both heads (soft targets for the auxiliary one); the loss."""
        x = self.features(images)
        p_pri, p_aux = _softmax(x @ self.w_p), _softmax(x @ self.w_a)
        t_pri = np.eye(self.w_p.shape[1], dtype=np.float32)[primary]
        loss = -(t_pri * np.log(p_pri + 1e-12)).sum(1).mean() - (aux_soft * np.log(p_aux + 1e-12)).sum(1).mean()
        self.w_p -= lr * x.T @ (p_pri - t_pri) / len(x)   # softmax cross-entropy gradients
        self.w_a -= lr * x.T @ (p_aux - aux_soft) / len(x)
        return float(loss)


def fit_softmax(labels: LabelFile, images: np.ndarray, steps: int = 50, lr: float = 2.0, batch_size: int = 128,
                seed: int = 0) -> list[float]:
    """`SoftmaxHeads` trained on primary + soft auxiliary targets: the reader feeding any framework.

    `images`: the split's uint8 [N, C, H, W] in split order (`LabelFile.folder_images` for an ImageFolder);
    returns the loss of each step. Batches are at most the split's size, so a small split still trains.
    """
    model = SoftmaxHeads(images, labels.num_primary, labels.num_aux, seed)
    batch_size = max(1, min(batch_size, len(labels.splits["train"]["index"])))
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps:
        for b in labels.batches("train", batch_size, shuffle=True, seed=seed + epoch, drop_last=True):
            losses.append(model.step(images[b["index"]], b["primary"], b["aux_soft"], lr))
            if len(losses) >= steps:
                break
        epoch += 1
    return losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Read an auxgen HDF5 label export with numpy only.")
    ap.add_argument("labels", help="the .h5 export")
    add_model_options(ap)
    args = ap.parse_args(argv)
    describe(LabelFile(args.labels), args)


def add_model_options(ap: argparse.ArgumentParser) -> None:
    """The script options of the numpy model (numpy_reader, parquet_reader)."""
    images = ap.add_mutually_exclusive_group()
    images.add_argument("--images", help="a .npy of the train split's images (uint8 [N, C, H, W], split order): "
                                         "fit a numpy softmax model on them")
    images.add_argument("--image-root", help="an ImageFolder export: its folder, whose images are decoded as auxgen "
                                             "did (instead of --images)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2.0, help="step size on standardised pixels [default: 2.0]")


def describe(labels: LabelFile, args: argparse.Namespace) -> None:
    """The script's output: what the export holds as JSON, and with --images a numpy model fitted on it."""
    info = {"psi": labels.psi, "num_primary": labels.num_primary, "num_aux": labels.num_aux,
            "views": int(labels.attrs.get("views", 0)), "dtype": str(labels.attrs.get("dtype")),
            "splits": {k: len(v["index"]) for k, v in labels.splits.items()}}
    print(json.dumps(info))
    if args.images or args.image_root:
        images = labels.folder_images(args.image_root) if args.image_root else np.load(args.images)
        losses = fit_softmax(labels, images, args.steps, args.lr, args.batch_size)
        print(f"numpy softmax model: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")


if __name__ == "__main__":
    _common.run_main(main)
