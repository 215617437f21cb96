"""Datasets as in-memory uint8 tensors, and the paper's augmentation as explicit, replayable views.

Every dataset becomes two `Split`s of images in the stored format (uint8 [N, C, H, W]) with
primary labels and stable keys. Keeping data as tensors makes it cheap to put on the device
and lets augmentation be a pure function of recorded parameters (crop offsets and a flip),
which is what `export --views` stores so a downstream loader can rebuild the exact view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxgen.config import TrainConfig
from auxgen.errors import AuxgenError
from auxgen.hierarchy import cifar100_fine_to, cifar100_names

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGITS_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed, so every run of a dataset shares one test set whatever its --seed


@dataclass
class Split:
    """One split: images uint8 [N, C, H, W], primary labels [N], optional fine labels, keys."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    fine: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> Split:
        fine = self.fine[idx] if self.fine is not None else None
        return Split(self.images[idx], self.labels[idx], [self.keys[i] for i in idx.tolist()], fine)


@dataclass
class Data:
    """A dataset ready for training: train and test splits and what the models need to know."""

    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: list[str]
    augment: bool
    pad: int
    flip: bool = True  # horizontal flips in the augmentation
    fine_parent: list[int] | None = None  # primary class of each fine class, where the data has a label tree
    fine_names: list[str] | None = None
    _digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """sha256 over images, labels and keys of both splits: any change to the data shows."""
        return self._cached("all", lambda h: [_hash_split(h, sp) for sp in (self.train, self.test)], self.name)

    def split_fingerprint(self, which: str) -> str:
        """sha256 of one split (train or test) alone."""
        return self._cached(which, lambda h: _hash_split(h, getattr(self, which)), f"{self.name}/{which}")

    def _cached(self, what: str, feed: Callable[[Any], Any], salt: str) -> str:
        # hashing CIFAR takes a fraction of a second, and runs ask every epoch; a Data is not
        # modified once loaded, so each digest is computed once
        if what not in self._digests:
            h = hashlib.sha256(salt.encode())
            feed(h)
            self._digests[what] = h.hexdigest()
        return self._digests[what]


def _hash_split(h: Any, split: Split) -> None:
    h.update(split.images.contiguous().numpy().tobytes())
    h.update(split.labels.numpy().astype(np.int64).tobytes())
    h.update("\n".join(split.keys).encode())


# ------------------------------------------------------------------------------ augmentation
def draw_views(n: int, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random-crop-with-padding and flip parameters for n images: int64 [n, 3] = (dy, dx, flip).

    The crop takes rows dy..dy+H and columns dx..dx+W of the image zero-padded by `pad`, then
    mirrors left-right when flip is 1. (pad, pad, 0) is the identity view.
    """
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator)
    if not flip:  # drawn all the same, so a run's random stream does not depend on the choice
        flips.zero_()
    return torch.cat([offsets, flips], dim=1)


def apply_views(images: torch.Tensor, views: torch.Tensor, pad: int) -> torch.Tensor:
    """Apply (dy, dx, flip) views to a uint8 batch [B, C, H, W]; a pure function of its inputs."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    views = views.to(images.device)
    rows = views[:, 0, None] + torch.arange(h, device=images.device)  # [B, H]
    cols = views[:, 1, None] + torch.arange(w, device=images.device)  # [B, W]
    cols = torch.where(views[:, 2, None].bool(), cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------ loaders
def load_data(cfg: TrainConfig) -> Data:
    """Load the dataset a config names, as tensors; a missing dataset is an AuxgenError."""
    loaders = {"digits": _digits, "cifar10": _cifar, "cifar100": _cifar, "mnist": _mnist,
               "fashion-mnist": _mnist, "svhn": _svhn, "imagefolder": _imagefolder}
    train, test, names = loaders[cfg.dataset](cfg)
    rgb32 = cfg.dataset in ("cifar10", "cifar100", "svhn", "imagefolder")
    augment = {"auto": rgb32, "on": True, "off": False}[cfg.augment]
    size = train.images.shape[-1]
    data = Data(cfg.dataset, train, test, len(names), list(names), augment, pad=max(1, size // 8), flip=cfg.flip)
    if cfg.dataset == "digits" and cfg.primary_groups:
        data = _digit_groups(data, cfg.primary_groups)
    elif cfg.dataset == "imagefolder" and cfg.hierarchy_depth == 2:
        data = _two_level(data)
    return data


def _digit_groups(data: Data, groups: int) -> Data:
    """Digits as a hierarchy task: the primary class is a group of consecutive digits (0-4 | 5-9,
    or 0-1 | ... | 8-9) and the digit is the fine (human auxiliary) label, CIFAR-100's design in
    miniature."""
    size = 10 // groups
    parent = [d // size for d in range(10)]
    for split in (data.train, data.test):
        split.fine = split.labels.clone()
        split.labels = torch.tensor(parent)[split.fine]
    names = [f"{g * size}-{g * size + size - 1}" for g in range(groups)]
    return Data(data.name, data.train, data.test, groups, names, data.augment, data.pad, data.flip,
                fine_parent=parent, fine_names=[str(d) for d in range(10)])


def _two_level(data: Data) -> Data:
    """ROOT/COARSE/FINE/IMG: the tree's first level is the primary task, its second the fine labels.

    The one-level loader already makes COARSE the class (it searches class folders recursively)
    and keeps the path relative to the tree as the key, so FINE is the key's second component.
    Fine classes are numbered in (coarse, fine-name) order, train and test together.
    """
    fine_names: list[str] = []
    index: dict[tuple[int, str], int] = {}
    for split in (data.train, data.test):
        for key, label in zip(split.keys, split.labels.tolist(), strict=True):
            parts = key.split("/")
            if len(parts) != 3:
                raise AuxgenError(f"imagefolder --hierarchy-depth 2: {key} is not COARSE/FINE/IMAGE; every image "
                                  f"must sit two folders deep")
            if (label, parts[1]) not in index:
                index[(label, parts[1])] = -1
    for n, pair in enumerate(sorted(index)):
        index[pair] = n
        fine_names.append(f"{data.class_names[pair[0]]}/{pair[1]}")
    for split in (data.train, data.test):
        split.fine = torch.tensor([index[(lab, k.split("/")[1])] for k, lab in
                                   zip(split.keys, split.labels.tolist(), strict=True)], dtype=torch.long)
    parent = [c for c, _ in sorted(index)]
    return Data(data.name, data.train, data.test, data.num_classes, data.class_names, data.augment, data.pad,
                data.flip, fine_parent=parent, fine_names=fine_names)


def _keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}/{i:06d}" for i in range(n)]


def _digits(cfg: TrainConfig) -> tuple[Split, Split, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    # keys carry the id in scikit-learn's full set, so a downstream loader finds the image there
    train, test = (Split(images[idx], labels[idx], [f"digits/{name}/{i:06d}" for i in idx.tolist()])
                   for name, idx in (("train", perm[n_test:].sort().values), ("test", perm[:n_test].sort().values)))
    return train, test, [str(i) for i in range(10)]


def _download(cfg: TrainConfig, root: Path, fetch: Callable[[], object]) -> None:
    """Run a torchvision download; a network failure becomes a one-line error."""
    try:
        fetch()
    except Exception as e:  # URLError, HTTPError, checksum failures, ...
        reason = " ".join(str(e).split())  # torchvision's messages span lines; errors here are one line
        raise AuxgenError(f"downloading {cfg.dataset} into {root} failed ({type(e).__name__}: {reason}); check the "
                          f"network, or put the files there by hand and drop --download") from None


def _missing(cfg: TrainConfig, looked: Path, what: str) -> AuxgenError:
    return AuxgenError(
        f"{cfg.dataset} not found: looked in {looked} for {what}; pass --download to fetch it "
        f"there, or point --data-root at the folder that holds it"
    )


def _cifar(cfg: TrainConfig) -> tuple[Split, Split, list[str]]:
    """CIFAR-10/100 from the python pickle batches (torchvision only downloads them)."""
    import pickle

    root = Path(cfg.data_root).expanduser()
    c10 = cfg.dataset == "cifar10"
    folder = root / ("cifar-10-batches-py" if c10 else "cifar-100-python")
    if cfg.download:
        from torchvision import datasets

        _download(cfg, root, lambda: (datasets.CIFAR10 if c10 else datasets.CIFAR100)(str(root), download=True))
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)] if c10 else ["train"],
             "test": ["test_batch"] if c10 else ["test"]}
    if not all((folder / f).is_file() for fs in files.values() for f in fs):
        raise _missing(cfg, folder, "the python pickle batches (" + ", ".join(files["train"] + files["test"]) + ")")
    if cfg.dataset == "cifar100" and cfg.primary_level not in (3, 10, 20):
        raise AuxgenError(f"--primary-level must be 3, 10 or 20, got {cfg.primary_level}")
    splits = []
    for s in ("train", "test"):
        data, targets = [], []
        for f in files[s]:
            with open(folder / f, "rb") as fh:
                try:
                    entry = pickle.load(fh, encoding="latin1")
                except Exception:
                    raise AuxgenError(f"{folder / f} is not a CIFAR pickle batch; re-download it") from None
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets += entry["labels" if c10 else "fine_labels"]
        images = torch.from_numpy(np.ascontiguousarray(np.concatenate(data)))
        targets_t = torch.tensor(targets, dtype=torch.long)
        split = Split(images, targets_t, _keys(f"{cfg.dataset}/{s}", len(targets_t)))
        if not c10:
            split.fine = targets_t
            split.labels = cifar100_fine_to(cfg.primary_level)[targets_t]
        splits.append(split)
    names = (["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
             if c10 else list(cifar100_names(cfg.primary_level)))
    return splits[0], splits[1], names


def _mnist(cfg: TrainConfig) -> tuple[Split, Split, list[str]]:
    from torchvision import datasets

    root = Path(cfg.data_root).expanduser()
    cls, folder = ((datasets.MNIST, "MNIST") if cfg.dataset == "mnist"
                   else (datasets.FashionMNIST, "FashionMNIST"))
    if cfg.download:
        _download(cfg, root, lambda: [cls(str(root), train=t, download=True) for t in (True, False)])
    try:
        tv = {s: cls(str(root), train=(s == "train")) for s in ("train", "test")}
    except RuntimeError:
        raise _missing(cfg, root / folder / "raw", "the idx files (train-images-idx3-ubyte, ...)") from None
    splits = [Split(tv[s].data[:, None].contiguous(), tv[s].targets.long(),
                    _keys(f"{cfg.dataset}/{s}", len(tv[s].targets))) for s in ("train", "test")]
    return splits[0], splits[1], list(tv["train"].classes)


def _svhn(cfg: TrainConfig) -> tuple[Split, Split, list[str]]:
    """SVHN from train_32x32.mat / test_32x32.mat (torchvision only downloads them)."""
    from scipy.io import loadmat

    root = Path(cfg.data_root).expanduser()
    if cfg.download:
        from torchvision import datasets

        for s in ("train", "test"):
            _download(cfg, root, lambda s=s: datasets.SVHN(str(root), split=s, download=True))
    paths = {s: root / f"{s}_32x32.mat" for s in ("train", "test")}
    if not all(p.is_file() for p in paths.values()):
        raise _missing(cfg, root, "train_32x32.mat and test_32x32.mat")
    splits = []
    for s, p in paths.items():
        mat = loadmat(str(p))
        images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
        labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)  # SVHN stores 0 as 10
        splits.append(Split(images, labels, _keys(f"svhn/{s}", len(labels))))
    return splits[0], splits[1], [str(i) for i in range(10)]


def _scan_tree(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    if not root.is_dir():
        raise AuxgenError(f"imagefolder: {root} is not a folder; expected ROOT/CLASS/IMAGE files")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [(str(f.relative_to(root).as_posix()), i) for i, c in enumerate(classes)
             for f in sorted((root / c).rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not classes or not items:
        raise AuxgenError(f"imagefolder: no class folders with images ({', '.join(IMAGE_EXTENSIONS)}) "
                          f"under {root}; expected ROOT/CLASS/IMAGE files")
    return classes, items


def _load_images(root: Path, items: list[tuple[str, int]], size: int) -> torch.Tensor:
    from PIL import Image, ImageOps

    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (rel, _) in enumerate(items):
        try:
            with Image.open(root / rel) as img:
                # resize the short side and centre-crop, keeping the aspect ratio
                out[i] = np.asarray(ImageOps.fit(img.convert("RGB"), (size, size), Image.BILINEAR))
        except OSError as e:
            raise AuxgenError(f"imagefolder: cannot read image {root / rel}: {e}") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _imagefolder(cfg: TrainConfig) -> tuple[Split, Split, list[str]]:
    root = Path(cfg.data_root).expanduser()
    classes, items = _scan_tree(root)

    def split_of(tree: Path, its: list[tuple[str, int]]) -> Split:
        labels = torch.tensor([c for _, c in its], dtype=torch.long)
        return Split(_load_images(tree, its, cfg.image_size), labels, [rel for rel, _ in its])

    if cfg.test_root:
        test_root = Path(cfg.test_root).expanduser()
        test_classes, test_items = _scan_tree(test_root)
        if test_classes != classes:
            raise AuxgenError(f"imagefolder: class folders of {test_root} differ from those of {root}")
        return split_of(root, items), split_of(test_root, test_items), classes
    full = split_of(root, items)
    if len(full) < 5:
        raise AuxgenError(f"imagefolder: only {len(full)} images under {root}; need at least 5 to split")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, int(round(len(full) * 0.2)))
    return full.subset(perm[n_test:].sort().values), full.subset(perm[:n_test].sort().values), classes
