"""Train with frozen auxgen labels in PyTorch: your dataset + an HDF5 export, paired by key.

    from pipelines.torch_frozen import FrozenLabels, TwoHeadNet, train_epoch
    base = torchvision.datasets.CIFAR100("data", train=True)          # or an ImageFolder, or your own
    ds = FrozenLabels(base, "labels/c100.h5", split="train")          # -> (image, primary, aux_soft)
    loader = torch.utils.data.DataLoader(ds, batch_size=100, shuffle=True, num_workers=4)
    model = TwoHeadNet(3, ds.num_primary, ds.num_aux)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch in range(200):
        train_epoch(model, loader, opt, gamma=2.0)                    # focal loss; gamma=0 is cross-entropy

Script:  python pipelines/torch_frozen.py --labels labels/c100.h5 --dataset cifar100 --data-root data
Needs torch, numpy and h5py only (torchvision / scikit-learn only to build the script's datasets).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

if not __package__:  # run as a script (python pipelines/torch_frozen.py): import pipelines from the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines._common import (  # noqa: E402
    apply_view,
    collate,
    export_fits,
    export_image_shape,
    open_export,
    open_image,
    present_image,
    read_attrs,
    run_main,
    take_view,
)
from pipelines._common import read_split as _read_split  # noqa: E402


# ------------------------------------------------------------------------------ reading and views
def read_split(path: str | Path, split: str = "train") -> dict[str, Any]:
    """One split of an HDF5 export as numpy arrays, plus the file attributes under "attrs"."""
    with open_export(path) as f:
        if split not in f:
            raise KeyError(f"{path} has no {split!r} split (has {', '.join(f)})")
        out = _read_split(f, split, ("index", "primary", "aux_soft", "aux_hard", "views"))
        out["attrs"] = read_attrs(f)
    return out


def random_view(pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random crop-with-padding and flip, (dy, dx, flip), as auxgen trains with."""
    return torch.cat([torch.randint(0, 2 * pad + 1, (2,), generator=generator),
                      torch.randint(0, 2, (1,), generator=generator)])


def default_locate(base: Any) -> Callable[[str], int]:
    """How an export key finds its row in `base`: ImageFolder by relative path, else by the key's number.

    Keys are DATASET/SPLIT/INDEX (docs/format.md): INDEX is the row of torchvision's CIFAR, MNIST and
    SVHN datasets, and the original id of scikit-learn's digits.
    """
    if hasattr(base, "samples") and hasattr(base, "root"):
        root = Path(base.root)
        rows = {Path(p).relative_to(root).as_posix(): i for i, (p, _) in enumerate(base.samples)}
        return rows.__getitem__
    return lambda key: int(key.rsplit("/", 1)[-1])


class FrozenLabels(Dataset):
    """(image, primary, aux_soft) for every sample of an export's split, images taken from `base`.

    `base[i]` returns (image, target) like a torchvision dataset; `locate(key) -> i` maps an export
    key to its row in `base` (default: `default_locate`). Images come out as the labels saw them: a PIL
    image of an ImageFolder/csv/hf export is fitted to the export's `image_shape` as auxgen decoded it
    (`fit_image`), and an image of another shape is an ExportError. With a --views export, view="random"
    returns a random stored view of the image with that view's own label; augment=True instead
    applies a fresh random crop/flip (the label stays the unaugmented image's, as frozen labels are).
    """

    def __init__(self, base: Any, labels: str | Path, split: str = "train",
                 locate: Callable[[str], int] | None = None, view: str = "random", augment: bool = False) -> None:
        d = read_split(labels, split)
        self.base, self.view, self.augment = base, view, augment
        self.keys, self.primary = d["keys"], torch.from_numpy(d["primary"].astype(np.int64))
        self.aux_soft = torch.from_numpy(d["aux_soft"].astype(np.float32))
        self.views = torch.from_numpy(d["views"].astype(np.int64)) if "views" in d else None
        self.attrs = d["attrs"]
        self.image_shape, self.fits = export_image_shape(self.attrs), export_fits(self.attrs)
        self.pad = int(self.attrs.get("pad", 0))
        self.num_primary, self.num_aux = int(self.attrs["num_primary"]), int(self.attrs["num_aux"])
        locate = locate or default_locate(base)
        try:
            self.rows = [locate(k) for k in self.keys]
        except (KeyError, ValueError) as e:
            raise KeyError(f"an export key has no sample in the base dataset ({e}); pass locate=") from None
        if self.rows and (min(self.rows) < 0 or max(self.rows) >= len(base)):
            raise KeyError(f"export keys point outside the base dataset (0..{len(base) - 1}); wrong dataset or split?")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image = present_image(self.base[self.rows[j]][0], self.image_shape, self.fits, self.keys[j])
        aux = self.aux_soft[j]
        if self.views is not None:
            v = int(torch.randint(0, self.views.shape[1], ())) if self.view == "random" else 0
            image, aux = take_view(image, aux, self.views[j], v, self.pad)
        elif self.augment and self.pad:
            image = apply_view(image, random_view(self.pad), self.pad)
        return image, int(self.primary[j]), aux

# ------------------------------------------------------------------------------ model, loss, loop
class TwoHeadNet(nn.Module):
    """A small CNN with a primary head over P classes and an auxiliary head over K; takes uint8 or float images."""

    def __init__(self, in_channels: int, num_primary: int, num_aux: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*block(in_channels, width), nn.MaxPool2d(2, ceil_mode=True),
                                  *block(width, 2 * width), nn.MaxPool2d(2, ceil_mode=True),
                                  *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.primary = nn.Linear(4 * width, num_primary)
        self.aux = nn.Linear(4 * width, num_aux)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dtype == torch.uint8:
            x = (x.float() / 255.0 - 0.5) / 0.2
        h = self.body(x)
        return self.primary(h), self.aux(h)


def soft_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Mean of -sum_k t_k (1 - p_k)^gamma log p_k; target [B, K] soft or [B] classes; gamma=0: cross-entropy."""
    logp = torch.log_softmax(logits.float(), dim=1)
    if target.dim() == 1:
        target = F.one_hot(target, logits.shape[1]).float()
    weight = (1 - logp.exp()).pow(gamma) if gamma else 1.0
    return -(target * weight * logp).sum(1).mean()


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, gamma: float = 0.0,
                aux_weight: float = 1.0, device: str | torch.device = "cpu") -> list[float]:
    """One pass over (image, primary, aux_soft) batches; returns the loss of every step."""
    model.train()
    losses = []
    for x, y, aux in batches:
        x, y, aux = x.to(device), torch.as_tensor(y).to(device), aux.to(device)
        pri_logits, aux_logits = model(x)
        loss = soft_focal_loss(pri_logits, y, gamma) + aux_weight * soft_focal_loss(aux_logits, aux, gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Iterable, device: str | torch.device = "cpu") -> float:
    """Primary-task accuracy over (image, primary, ...) batches."""
    model.eval()
    correct = total = 0
    for x, y, *_ in batches:
        pred = model(x.to(device))[0].argmax(1).cpu()
        correct += int((pred == torch.as_tensor(y)).sum())
        total += len(pred)
    return correct / max(total, 1)


# ------------------------------------------------------------------------------ script
class ArrayDataset(Dataset):
    """(image, target) from arrays: the smallest 'torchvision-style' dataset."""

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        self.images, self.targets = torch.from_numpy(images), targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


def digits_dataset() -> ArrayDataset:
    """scikit-learn's 8x8 digits, all 1797, scaled to 0..255 as auxgen stores them (keys digits/SPLIT/ID)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return ArrayDataset(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None], d.target)


def base_dataset(name: str, root: str, split: str) -> Any:
    """The torchvision dataset (or digits) whose rows an export's keys name."""
    if name == "digits":
        return digits_dataset()
    from torchvision import datasets

    train = split == "train"
    if name == "imagefolder":
        return datasets.ImageFolder(root, loader=open_image)  # images in their own mode, fitted by FrozenLabels
    if name == "svhn":
        return datasets.SVHN(root, split=split)
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "mnist": datasets.MNIST,
           "fashion-mnist": datasets.FashionMNIST}[name]
    return cls(root, train=train)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train a two-head network on frozen auxgen labels (HDF5 export).")
    ap.add_argument("--labels", required=True, help="the .h5 export")
    ap.add_argument("--dataset", default="cifar100",
                    choices=("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "imagefolder"))
    ap.add_argument("--data-root", default="data", help="torchvision root (ImageFolder: its tree)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--gamma", type=float, default=0.0, help="focal loss gamma (0: cross-entropy)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--augment", action="store_true", help="random crop/flip (when no views were exported)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    train = FrozenLabels(base_dataset(args.dataset, args.data_root, "train"), args.labels, "train",
                         augment=args.augment)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate, drop_last=True)
    channels = train[0][0].shape[0]
    model = TwoHeadNet(channels, train.num_primary, train.num_aux, args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    result: dict[str, Any] = {"epochs": []}
    for epoch in range(1, args.epochs + 1):
        losses = train_epoch(model, loader, opt, args.gamma)
        result["epochs"].append(sum(losses) / len(losses))
        print(f"epoch {epoch}: loss {result['epochs'][-1]:.4f}", flush=True)
    try:
        test = FrozenLabels(base_dataset(args.dataset, args.data_root, "test"), args.labels, "test")
        result["test_acc"] = accuracy(model, DataLoader(test, batch_size=256, collate_fn=collate))
        print(f"test primary accuracy {100 * result['test_acc']:.2f}% ({len(test)} samples)")
    except KeyError:
        pass  # the export has no test split
    return result


if __name__ == "__main__":
    run_main(main)
