"""Datasets as in-memory uint8 tensors, and the paper's augmentation as explicit, replayable views.

Every dataset becomes two `Split`s of images in the stored format (uint8 [N, C, H, W]) with
primary labels and stable keys. Keeping data as tensors makes it cheap to put on the device
and lets augmentation be a pure function of recorded parameters (crop offsets and a flip),
which is what `export --views` stores so a downstream loader can rebuild the exact view.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxgen.errors import AuxgenError
from auxgen.hierarchy import cifar100_fine_to, cifar100_names
from auxgen.paths import one_line, regular_file_problem

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


def colour_jitter(images: torch.Tensor, n: int, generator: torch.Generator, part: slice = slice(None)
                  ) -> torch.Tensor:
    """A random brightness gain (0.6-1.4) and, for RGB, a random channel order per image of a uint8 batch.

    Only for the generator's pair views (never stored): a label that survives it cannot be about
    colour. Draws are made for `n` images (the global batch) and `part` of them applied.
    """
    gain = (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator))[part].to(images.device)
    order = torch.argsort(torch.rand(n, images.shape[1], generator=generator), dim=1)[part].to(images.device)
    out = images.float() * gain
    if images.shape[1] == 3:
        out = out.gather(1, order[:, :, None, None].expand_as(out))
    return out.round().clamp(0, 255).to(torch.uint8)


THUMBNAIL_MATCHES = ("pixels", "shape", "aligned")


def thumbnails(images: torch.Tensor, match: str = "pixels", chunk: int = 1024) -> torch.Tensor:
    """Unit-length, mean-centred 8x8 thumbnails [N, D]: what "looks alike" means to the pair terms,
    ignoring overall brightness. `match` says what else is ignored:

    - pixels: nothing more; the thumbnail of every channel [N, C*64].
    - shape: colour. Each pixel's colour (centred per channel) is projected on the image's main colour
      axis, so a shape in colour a on background b and the same shape in colour c on d give the same
      map, once its sign is set so that the rarer extreme (the ink) is positive [N, 64]. On one channel
      it is pixels (exactly).
    - aligned: colour, place and size. The shape map's ink (its positive part) is moved to the centre
      of the frame and scaled to a fixed spread by its first and second moments before it is pooled,
      the moment normalisation of character recognition: the same object drawn elsewhere, larger or
      smaller, matches [N, 64].

    Every thumbnail is a function of its own image only, so images go `chunk` at a time: a large training set
    never exists in float at full resolution (the aligned path holds several such copies).
    """
    if match not in THUMBNAIL_MATCHES:
        raise ValueError(f"match must be one of {THUMBNAIL_MATCHES}, got {match!r}")
    if len(images) > chunk:
        return torch.cat([thumbnails(images[i:i + chunk], match, chunk) for i in range(0, len(images), chunk)])
    x = images.float()
    if match == "aligned":
        x = _moment_aligned(shape_map(x))
    t = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(2)  # [N, C, 64]
    if match == "shape" and t.shape[1] > 1:
        t = shape_map(t.unflatten(2, (8, 8))).flatten(2)
    t = t.flatten(1)
    t = t - t.mean(dim=1, keepdim=True)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)


def shape_map(x: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """[N, C, H, W] -> [N, 1, H, W]: each image's colours (centred per channel) projected on its own main colour
    axis, the sign set so that the rarer extreme, the ink, is positive. One channel is only centred and signed.

    The main axis, the largest eigenvector of the CxC colour covariance, comes from power iteration started at
    the covariance's column of largest variance (never orthogonal to it when the largest eigenvalue is over C
    times the next): plain matrix products, which torch.export and ONNX take, as the generator's input needs.
    """
    t = x.flatten(2)
    t = t - t.mean(dim=2, keepdim=True)
    if t.shape[1] > 1:
        cov = t @ t.transpose(1, 2)  # [N, C, C]
        start = cov.diagonal(dim1=1, dim2=2).argmax(dim=1)  # [N]
        v = cov.gather(2, start[:, None, None].expand(-1, cov.shape[1], 1))  # [N, C, 1]
        for _ in range(iterations):
            v = cov @ v
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        t = (v * t).sum(1, keepdim=True)
    t = t * torch.where((t ** 3).sum(2, keepdim=True) < 0, -1.0, 1.0)
    return t.view(x.shape[0], 1, *x.shape[2:])


def _moment_aligned(m: torch.Tensor, spread: float = 0.5) -> torch.Tensor:
    """The ink of shape maps [N, 1, H, W] (their positive part) resampled so that its centre of mass is the
    frame's centre and its root-mean-square radius `spread` of the frame's half-width."""
    ink = m.clamp_min(0)[:, 0]
    n, h, w = ink.shape
    # pixel centres in the frame's [-1, 1] coordinates, as affine_grid places them (align_corners=False)
    ys = ((torch.arange(h, device=m.device) + 0.5) * 2 / h - 1)[None, :, None]
    xs = ((torch.arange(w, device=m.device) + 0.5) * 2 / w - 1)[None, None, :]
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    cy, cx = (ink * ys).sum((1, 2)) / mass, (ink * xs).sum((1, 2)) / mass
    var = (ink * ((ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2)).sum((1, 2)) / mass / 2
    scale = (var.sqrt() / spread).clamp_min(1e-3)  # an empty map keeps a finite frame
    theta = torch.zeros(n, 2, 3, device=m.device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = torch.nn.functional.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return torch.nn.functional.grid_sample(ink[:, None], grid, align_corners=False)


def same_class_neighbours(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, k: int,
                          chunk: int = 1024, match: str = "pixels") -> torch.Tensor:
    """For every image, the k most similar other images of its class among `rows`: int64 [N, k] row ids.

    Similarity is the cosine of `thumbnails(..., match)` (a cheap stand-in for "looks alike"); rows
    outside `rows` get -1. A class with k or fewer rows lends a row itself where it runs out of
    others. Used for the generator's pair terms.
    """
    return nearest_of_class(thumbnails(images[rows], match), labels, rows, k, chunk)


def nearest_of_class(desc: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, k: int,
                     chunk: int = 1024) -> torch.Tensor:
    """same_class_neighbours by given descriptors: `desc` [len(rows), D], unit rows, one per row of `rows`."""
    cls = labels[rows]
    out = torch.full((len(labels), k), -1, dtype=torch.long, device=desc.device)
    for start in range(0, len(rows), chunk):
        sims = desc[start:start + chunk] @ desc.T
        same = cls[start:start + chunk, None] == cls[None, :]
        sims = sims.masked_fill(~same, -float("inf"))
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -float("inf")  # not itself
        vals, pick = sims.topk(min(k, len(rows)), dim=1)
        own = torch.arange(start, start + len(sims), device=desc.device)[:, None]
        pick = torch.where(torch.isfinite(vals), pick, own)
        if pick.shape[1] < k:
            pick = torch.cat([pick, own.expand(-1, k - pick.shape[1])], dim=1)
        out[rows[start:start + chunk]] = rows[pick]
    return out


# ------------------------------------------------------------------------------ loaders
@dataclass(frozen=True)
class DataSpec:
    """What a loader reads: the data options of a run, named and documented as TrainConfig's
    fields (auxgen.compose.data_spec makes one from a config; the defaults live there only)."""

    dataset: str
    data_root: str
    test_root: str | None
    download: bool
    image_size: int
    image_column: str
    label_column: str
    fine_column: str | None
    primary_level: int
    augment: str
    flip: bool
    primary_groups: int | None
    hierarchy_depth: int


def load_data(spec: DataSpec) -> Data:
    """Load the dataset a spec names, as tensors; a missing dataset is an AuxgenError."""
    if spec.dataset not in DATASETS:
        raise AuxgenError(f"unknown dataset {spec.dataset!r}; choose one of {', '.join(DATASETS)}")
    entry = DATASETS[spec.dataset]
    try:
        train, test, names, *tree = entry.load(spec)
    except OSError as e:  # permissions, a vanished mount, I/O errors: the file system's answer, one line
        where = e.filename or spec.data_root
        raise AuxgenError(f"{spec.dataset}: cannot read {where} ({e.strerror or type(e).__name__})") from None
    augment = {"auto": entry.auto_augment, "on": True, "off": False}[spec.augment]
    size = train.images.shape[-1]
    data = Data(spec.dataset, train, test, len(names), list(names), augment, pad=max(1, size // 8), flip=spec.flip)
    if spec.dataset == "digits" and spec.primary_groups:
        data = _digit_groups(data, spec.primary_groups)
    elif spec.dataset == "imagefolder" and spec.hierarchy_depth == 2:
        data = _two_level(data)
    elif tree:  # the loader read fine labels (csv's third column, hf's --fine-column)
        data.fine_parent, data.fine_names = tree[0]
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
    pairs: set[tuple[int, str]] = set()
    for split in (data.train, data.test):
        for key, label in zip(split.keys, split.labels.tolist(), strict=True):
            parts = key.split("/")
            if len(parts) != 3:
                raise AuxgenError(f"imagefolder --hierarchy-depth 2: {key} is not COARSE/FINE/IMAGE; every image "
                                  f"must sit two folders deep")
            pairs.add((label, parts[1]))
    index = {pair: n for n, pair in enumerate(sorted(pairs))}
    fine_names = [f"{data.class_names[c]}/{fine}" for c, fine in sorted(pairs)]
    for split in (data.train, data.test):
        split.fine = torch.tensor([index[(lab, k.split("/")[1])] for k, lab in
                                   zip(split.keys, split.labels.tolist(), strict=True)], dtype=torch.long)
    parent = [c for c, _ in sorted(index)]
    return Data(data.name, data.train, data.test, data.num_classes, data.class_names, data.augment, data.pad,
                data.flip, fine_parent=parent, fine_names=fine_names)


def _keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}/{i:06d}" for i in range(n)]


def _digits(cfg: DataSpec) -> tuple[Split, Split, list[str]]:
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


def _download(cfg: DataSpec, root: Path, fetch: Callable[[], object]) -> None:
    """Run a torchvision download; a network failure becomes a one-line error."""
    try:
        fetch()
    except Exception as e:  # URLError, HTTPError, checksum failures, ...
        reason = " ".join(str(e).split())  # torchvision's messages span lines; errors here are one line
        raise AuxgenError(f"downloading {cfg.dataset} into {root} failed ({type(e).__name__}: {reason}); check the "
                          f"network, or put the files there by hand and drop --download") from None


def _missing(cfg: DataSpec, looked: Path, what: str) -> AuxgenError:
    return AuxgenError(
        f"{cfg.dataset} not found: looked in {looked} for {what}; pass --download to fetch it "
        f"there, or point --data-root at the folder that holds it"
    )


# What a CIFAR batch pickle may name: numpy's array reconstruction and plain builtin types.
# Unpickling calls whatever a pickle names, so a foreign file in a data slot must not get to
# name anything else (os.system, ...).
_CIFAR_PICKLE_GLOBALS = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("copyreg", "_reconstructor")}
    | {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    | {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
    | {("builtins", n) for n in ("bytearray", "bytes", "dict", "list", "tuple", "set", "frozenset", "int",
                                  "float", "str", "object")}
)


class _ForeignGlobal(Exception):
    """A pickle named something outside _CIFAR_PICKLE_GLOBALS."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise _ForeignGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """One CIFAR python batch: images uint8 [n, 3, 32, 32] and labels. Says whether a bad file is
    empty, truncated, not a pickle, or a pickle that is not a CIFAR batch."""
    raw = path.read_bytes()
    if not raw:
        raise AuxgenError(f"{path} is empty (0 bytes); re-download it")
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _ForeignGlobal as e:
        raise AuxgenError(f"{path} is not a CIFAR batch: the pickle names {e}, which a CIFAR batch never does "
                          f"(refused: unpickling it could run code)") from None
    except Exception as e:
        # every pickle of protocol 2+ (CIFAR's are 2) starts with the PROTO opcode
        is_pickle = raw[:1] == b"\x80" and 2 <= raw[1:2][0] <= 5 if len(raw) > 1 else False
        if is_pickle and (isinstance(e, EOFError) or "truncated" in str(e)):
            raise AuxgenError(f"{path} is truncated ({len(raw)} bytes; the pickle ends early); re-download it"
                              ) from None
        if is_pickle:
            raise AuxgenError(f"{path} is a damaged pickle ({type(e).__name__}: {' '.join(str(e).split())[:100]}); "
                              f"re-download it") from None
        raise AuxgenError(f"{path} is not a pickle file, so not a CIFAR python batch; is it the right file?") from None
    if not isinstance(entry, dict):
        raise AuxgenError(f"{path} is a pickle of a {type(entry).__name__}, not a CIFAR batch (a dict with "
                          f"'data' and '{label_key}')")
    missing = [k for k in ("data", label_key) if k not in entry]
    if missing:
        has = ", ".join(repr(k) for k in list(entry)[:6]) or "nothing"
        raise AuxgenError(f"{path} is a pickle but not a CIFAR batch of this dataset: no "
                          f"{' or '.join(map(repr, missing))} entry (it has {has})")
    try:
        data = np.asarray(entry["data"])
        labels = [int(v) for v in entry[label_key]]
    except (TypeError, ValueError, OverflowError):
        raise AuxgenError(f"{path}: 'data' must be an array of pixels and '{label_key}' a list of integers") from None
    if data.dtype != np.uint8 or data.size % 3072 or data.size // 3072 != len(labels):
        raise AuxgenError(f"{path}: 'data' holds {data.size} {data.dtype} values for {len(labels)} labels; a CIFAR "
                          f"batch holds 3072 uint8 values (3x32x32) per label")
    bad = next((v for v in labels if not 0 <= v < num_classes), None)
    if bad is not None:
        raise AuxgenError(f"{path}: label {bad} is outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(cfg: DataSpec) -> tuple[Split, Split, list[str]]:
    """CIFAR-10/100 from the python pickle batches (torchvision only downloads them)."""
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
            images_f, labels_f = _read_cifar_batch(folder / f, "labels" if c10 else "fine_labels", 10 if c10 else 100)
            data.append(images_f)
            targets += labels_f
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


def _mnist(cfg: DataSpec) -> tuple[Split, Split, list[str]]:
    from torchvision import datasets

    root = Path(cfg.data_root).expanduser()
    cls, folder = ((datasets.MNIST, "MNIST") if cfg.dataset == "mnist"
                   else (datasets.FashionMNIST, "FashionMNIST"))
    if cfg.download:
        _download(cfg, root, lambda: [cls(str(root), train=t, download=True) for t in (True, False)])
    raw = root / folder / "raw"
    if not all((raw / f).is_file() for pair in _IDX_FILES.values() for f in pair):
        raise _missing(cfg, raw, "the idx files (train-images-idx3-ubyte, ...)")
    for images_f, labels_f in _IDX_FILES.values():  # torchvision reports bad files by assert or not at all
        n_images = _check_idx(raw / images_f, 3)
        n_labels = _check_idx(raw / labels_f, 1)
        if n_images != n_labels:
            raise AuxgenError(f"{raw / images_f} holds {n_images} images but {labels_f} {n_labels} labels; "
                              f"the files do not belong together")
    try:
        tv = {s: cls(str(root), train=(s == "train")) for s in ("train", "test")}
    except (RuntimeError, AssertionError, ValueError) as e:
        raise AuxgenError(f"{cfg.dataset}: the idx files in {raw} cannot be read ({type(e).__name__}); "
                          f"re-download them") from None
    for s in ("train", "test"):
        bad = tv[s].targets[(tv[s].targets < 0) | (tv[s].targets >= len(tv[s].classes))]
        if len(bad):
            raise AuxgenError(f"{raw / _IDX_FILES[s][1]}: label {int(bad[0])} is outside 0..{len(tv[s].classes) - 1}")
    splits = [Split(tv[s].data[:, None].contiguous(), tv[s].targets.long(),
                    _keys(f"{cfg.dataset}/{s}", len(tv[s].targets))) for s in ("train", "test")]
    return splits[0], splits[1], list(tv["train"].classes)


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _check_idx(path: Path, ndim: int) -> int:
    """Check an uncompressed idx file of uint8 (magic 0x0000 08 ndim) against its size; the item count."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
        if head[:2] == b"\x1f\x8b":
            raise AuxgenError(f"{path} is gzip-compressed; unpack it (gunzip) first")
        raise AuxgenError(f"{path} is not an idx file of {ndim}-d uint8 data "
                          f"(it starts with {head[:4].hex() or 'nothing'})")
    if len(head) < 4 + 4 * ndim:
        raise AuxgenError(f"{path} is truncated ({size} bytes; the header alone is {4 + 4 * ndim})")
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if size < expected:
        raise AuxgenError(f"{path} is truncated ({size} bytes; its header promises {expected}); re-download it")
    if size > expected:
        raise AuxgenError(f"{path} has {size - expected} bytes after the data its header describes; "
                          f"is it the right file?")
    return dims[0]


def _load_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """images uint8 [N, 3, 32, 32] and labels 0..9 of one SVHN .mat file."""
    from scipy.io import loadmat

    with open(path, "rb") as f:
        head = f.read(128)
    try:
        mat = loadmat(str(path))
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise AuxgenError(f"{path} is a MATLAB v7.3 file, which cannot be read here; SVHN's own files are "
                          f"v5: re-download them") from None
    except Exception as e:
        if head.startswith(b"MATLAB"):
            raise AuxgenError(f"{path} is a MATLAB file but cannot be read ({' '.join(str(e).split())[:100]}); "
                              f"it is truncated or damaged, re-download it") from None
        raise AuxgenError(f"{path} is not a MATLAB .mat file; is it the right file?") from None
    if "X" not in mat or "y" not in mat:
        has = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise AuxgenError(f"{path} is a .mat file but not SVHN's: it needs variables X and y (it has {has})")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise AuxgenError(f"{path}: X is {x.dtype} of shape {list(x.shape)}; SVHN's is uint8 of shape [32, 32, 3, N]")
    if y.size != x.shape[3] or not np.issubdtype(y.dtype, np.number):
        raise AuxgenError(f"{path}: y holds {y.size} labels for {x.shape[3]} images")
    labels = y.astype(np.int64).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise AuxgenError(f"{path}: labels must be 1..10 (10 for the digit 0), "
                          f"found {int(labels.min())}..{int(labels.max())}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images, torch.from_numpy(labels % 10)  # SVHN stores 0 as 10


def _svhn(cfg: DataSpec) -> tuple[Split, Split, list[str]]:
    """SVHN from train_32x32.mat / test_32x32.mat (torchvision only downloads them)."""
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
        images, labels = _load_svhn_mat(p)
        splits.append(Split(images, labels, _keys(f"svhn/{s}", len(labels))))
    return splits[0], splits[1], [str(i) for i in range(10)]


def _scan_tree(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    if not root.is_dir():
        raise AuxgenError(f"imagefolder: {root} is not a folder; expected ROOT/CLASS/IMAGE files")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [(rel, i) for i, c in enumerate(classes) for rel in _class_images(root, c)]
    if not classes or not items:
        raise AuxgenError(f"imagefolder: no class folders with images ({', '.join(IMAGE_EXTENSIONS)}) "
                          f"under {root}; expected ROOT/CLASS/IMAGE files")
    # a class without images would still be a class of the network, one no sample ever teaches
    empty = [c for i, c in enumerate(classes) if not any(label == i for _, label in items)]
    if empty:
        raise AuxgenError(f"imagefolder: class folder {root / empty[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                          f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; add images or remove it")
    return classes, items


def _class_images(root: Path, cls: str) -> list[str]:
    """The image files of one class folder, as paths relative to root, sorted.

    Hidden entries at any depth are not samples (a `.ipynb_checkpoints/` copy, macOS `._x.png` files),
    as hidden class folders are not classes. A name that is not UTF-8 cannot be a key (it is refused
    before anything is written), nor can a FIFO or device named like an image be read.
    """
    found = []
    for f in sorted((root / cls).rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        text = rel.as_posix()
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise AuxgenError(f"imagefolder: {str(root / rel)!r} has a name that is not valid UTF-8; rename it (sample "
                              f"keys are text)") from None
        if _blocks(f):
            raise AuxgenError(f"imagefolder: {root / rel} is not a regular file (a FIFO, socket or device); "
                              f"refusing to read it")
        found.append(text)
    return found


def _blocks(path: Path) -> bool:
    """A FIFO, socket or device: reading it would block or never end (folders and broken links fail later,
    with their own message)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _to_rgb(img: Any) -> Any:
    """A PIL image as 8-bit RGB as every viewer shows it: EXIF orientation applied, and 16-bit or float
    greyscale scaled from its type's range (convert("RGB") would clip 16-bit values to 255)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        elif img.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _load_images(root: Path, items: list[tuple[str, int]], size: int, kind: str = "imagefolder") -> torch.Tensor:
    return _decode_images([(root / rel, str(root / rel)) for rel, _ in items], size, kind)


def _decode_images(sources: list[tuple[Path | bytes, str]], size: int, kind: str) -> torch.Tensor:
    """Decode image files or encoded bytes (each with the name an error gives it) into uint8 [N, 3, size, size].

    Every input decodes here, through PIL: no image a data set holds can run code, and all look alike.
    """
    from PIL import Image, ImageOps

    out = np.empty((len(sources), size, size, 3), dtype=np.uint8)
    for i, (src, name) in enumerate(sources):
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                # resize the short side and centre-crop, keeping the aspect ratio
                out[i] = np.asarray(ImageOps.fit(_to_rgb(img), (size, size), Image.BILINEAR))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            # OSError: not an image, truncated, unreadable; ValueError: a mode PIL cannot convert to RGB
            empty = len(src) == 0 if isinstance(src, bytes) else src.is_file() and src.stat().st_size == 0
            reason = "the file is empty (0 bytes)" if empty else one_line(e, 10_000, whole=True)
            raise AuxgenError(f"{kind}: cannot read image {name}: {reason}") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _imagefolder(cfg: DataSpec) -> tuple[Split, Split, list[str]]:
    root = Path(cfg.data_root).expanduser()
    classes, items = _scan_tree(root)
    if len(classes) < 2:
        raise AuxgenError(f"imagefolder: {root} has one class folder ({classes[0]}); a primary task needs at "
                          f"least 2 classes (ROOT/CLASS/IMAGE files)")

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
    return (*_seeded_split(full, f"imagefolder: only {len(full)} images under {root}"), classes)


def _seeded_split(full: Split, few: str) -> tuple[Split, Split]:
    """A seeded 20% test split (the same whatever the run's --seed); `few` starts the message for under 5 images."""
    if len(full) < 5:
        raise AuxgenError(f"{few}; need at least 5 to split")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, int(round(len(full) * 0.2)))
    return full.subset(perm[n_test:].sort().values), full.subset(perm[:n_test].sort().values)


Tree = tuple[list[int], list[str]]  # a label tree: the primary class of each fine class, and the fine names


@dataclass(frozen=True)
class _Source:
    """Where labels come from, for messages: the loader (csv, hf), the file, and how its i-th row is named
    (an editor's line for a csv, a table row for hf)."""

    kind: str
    where: str
    place: Callable[[int], str] = lambda i: f"row {i + 1}"


def _classes(values: list[Any], src: _Source, known: list[str] | None = None) -> tuple[list[int], list[str]]:
    """Labels as read (names, or integers) -> class indices and class names (sorted; numbers by value).

    The classes are the labels that occur, never a range up to the largest (labels 0 and 7 are two classes,
    and 10**12 allocates nothing), unless `known` gives the names of integer labels 0..C-1 (a Hugging Face
    ClassLabel)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if values and min(values) < 0:
            raise AuxgenError(f"{src.kind}: label {min(values)} is negative; integer labels are 0 and up")
        if known:
            if values and max(values) >= len(known):
                raise AuxgenError(f"{src.kind}: label {max(values)} is beyond the {len(known)} class names the data "
                                  f"records")
            return list(values), list(known)
        present = sorted(set(values))
        _say_renumbered(present, src)
        index = {v: i for i, v in enumerate(present)}
        return [index[v] for v in values], [str(v) for v in present]
    texts = [_label_text(v, src, "label", i) for i, v in enumerate(values)]
    numeric = all(t.isdigit() for t in texts)
    names = sorted(set(texts), key=(lambda t: int(t)) if numeric else None)
    if numeric:
        _say_renumbered([int(t) for t in names], src)
    index = {n: i for i, n in enumerate(names)}
    return [index[t] for t in texts], names


def _say_renumbered(present: list[int], src: _Source) -> None:
    """One line where numeric labels are not 0..C-1, so their class numbers differ from the labels (the names
    keep the labels): a gap is told, not turned into empty classes."""
    if present == list(range(len(present))):
        return
    shown = ", ".join(str(v) for v in present[:6]) + (", ..." if len(present) > 6 else "")
    print(f"note: {src.kind}: {src.where} has labels {shown} ({len(present)} values, not 0..{len(present) - 1}); "
          f"they are classes 0..{len(present) - 1} in label order, each named by its label", file=sys.stderr)


def _label_text(value: Any, src: _Source, what: str, row: int) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise AuxgenError(f"{src.kind}: {src.place(row)} has an empty {what}")
    return text


def _with_tree(labels: list[int], fines: list[Any], names: list[str], src: _Source) -> tuple[torch.Tensor, Tree]:
    """Fine labels named inside each primary class -> global fine indices, numbered in (class, fine) order."""
    texts = [_label_text(f, src, "fine label", i) for i, f in enumerate(fines)]
    pairs = sorted(set(zip(labels, texts, strict=True)))
    index = {pair: n for n, pair in enumerate(pairs)}
    fine = torch.tensor([index[pair] for pair in zip(labels, texts, strict=True)], dtype=torch.long)
    return fine, ([c for c, _ in pairs], [f"{names[c]}/{f}" for c, f in pairs])


def _labelled(full: Split, names: list[str], fines: list[Any] | None, src: _Source
              ) -> tuple[Split, Split, list[str]] | tuple[Split, Split, list[str], Tree]:
    """Labelled images -> the seeded train/test split, the class names and the fine-label tree where there is one."""
    if len(names) < 2:
        raise AuxgenError(f"{src.kind}: {src.where} has one class ({names[0] if names else 'none'}); a primary "
                          f"task needs at least 2")
    tree = None
    if fines is not None:
        full.fine, tree = _with_tree(full.labels.tolist(), fines, names, src)
    train, test = _seeded_split(full, f"{src.kind}: only {len(full)} images in {src.where}")
    return (train, test, names) if tree is None else (train, test, names, tree)


def _csv(cfg: DataSpec) -> tuple[Split, Split, list[str]] | tuple[Split, Split, list[str], Tree]:
    """A CSV list of PATH,LABEL[,FINE] rows (a first row `path,label[,fine]` is a header); paths are relative to
    the CSV's folder and must stay inside it. FINE (a name inside its class) gives the two-level hierarchy."""
    from auxgen.paths import check_regular_file

    path = Path(cfg.data_root).expanduser()
    check_regular_file(path, "csv: --data-root")
    lines, rows = _csv_rows(path)
    src = _Source("csv", str(path), lambda i: f"{path} line {lines[i]}")
    width = len(rows[0])
    bad = next((i for i, r in enumerate(rows) if len(r) != width or width not in (2, 3)), None)
    if bad is not None:
        raise AuxgenError(f"csv: {src.place(bad)} has {len(rows[bad])} fields; every row is PATH,LABEL or "
                          f"PATH,LABEL,FINE (all alike)")
    keys, files = _csv_files(path, rows, lines)
    labels, names = _classes([r[1] for r in rows], src)
    images = _decode_images([(f, str(f)) for f in files], cfg.image_size, "csv")
    full = Split(images, torch.tensor(labels, dtype=torch.long), keys)
    return _labelled(full, names, [r[2] for r in rows] if width == 3 else None, src)


def _csv_rows(path: Path) -> tuple[list[int], list[list[str]]]:
    """The non-blank rows of a csv list (a `path,label` header dropped), each with the line it starts on as an
    editor numbers it (blank lines and the header counted)."""
    import csv

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AuxgenError(f"csv: {path} is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # lenient: `"cat" ` is cat, as it always was
    lines, rows, start = [], [], 1
    try:
        for row in reader:
            if any(c.strip() for c in row):
                _one_line_row(row, path, start, reader.line_num)
                lines.append(start)
                rows.append(row)
            start = reader.line_num + 1
    except csv.Error as e:  # a field over the csv module's limit: a quote never closed, in a long list
        raise AuxgenError(f"csv: {path} line {start}: {one_line(e, 200)} (a quote not closed or not doubled?)"
                          ) from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        lines, rows = lines[1:], rows[1:]
    if not rows:
        raise AuxgenError(f"csv: {path} lists no images; expected rows PATH,LABEL[,FINE]")
    return lines, rows


def _one_line_row(row: list[str], path: Path, start: int, end: int) -> None:
    """No path or label spans lines: a row that does opened a quote it never closed where intended."""
    if end != start or any("\n" in c or "\r" in c for c in row):
        raise AuxgenError(f"csv: {path} line {start}: a quoted field runs on to line {end}; a quote is not closed "
                          f"(write a quote inside a field as two)")


def _csv_files(path: Path, rows: list[list[str]], lines: list[int]) -> tuple[list[str], list[Path]]:
    """Each row's image as a key (its path normalised: `./a/../img/x.png` is `img/x.png`) and a file confined to
    the csv's folder; two rows reaching one file (spelled alike or not, or through a link) are refused."""
    from auxgen.paths import confined

    base = path.parent
    keys, files, seen = [], [], {}
    for i, r in enumerate(rows):
        key = _normal_rel(r[0].strip())
        target = confined(base, key) if key else None
        if target is None:
            raise AuxgenError(f"csv: {path} line {lines[i]}: {r[0]!r} is not a relative path inside {base}")
        problem = regular_file_problem(target)
        if problem:
            raise AuxgenError(f"csv: {path} line {lines[i]}: {target} {problem}")
        first = seen.setdefault(target.resolve(), i)  # a dict: one look-up a row, however long the list
        if first != i:
            _twice(path, (rows[first], rows[i]), (lines[first], lines[i]))
        keys.append(key)
        files.append(target)
    return keys, files


def _normal_rel(rel: str) -> str | None:
    """A relative path with `.`, `..` and repeated slashes collapsed, or None where it is empty, absolute, or
    climbs out of its folder."""
    import posixpath

    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        return None
    norm = posixpath.normpath(rel)
    return None if norm in (".", "..") or norm.startswith(("../", "/")) else norm


def _twice(path: Path, pair: tuple[list[str], list[str]], lines: tuple[int, int]) -> None:
    """Two rows naming one image: with two labels the list contradicts itself, with one it repeats itself."""
    (a, b), (la, lb) = [(r[0].strip(), r[1].strip()) for r in pair], lines
    if a[1] != b[1]:
        raise AuxgenError(f"csv: {path} lines {la} and {lb} list one image ({a[0]!r} and {b[0]!r}) with labels "
                          f"{a[1]!r} and {b[1]!r}; list every image once, with one label")
    spelled = f"{a[0]!r} and {b[0]!r}" if a[0] != b[0] else f"{a[0]!r}"
    raise AuxgenError(f"csv: {path} lists {_normal_rel(a[0])} twice (lines {la} and {lb}: {spelled}); "
                      f"every image once")


def _parquet_class_names(table: Any, column: str) -> list[str] | None:
    """The ClassLabel names Hugging Face records in a Parquet file's schema metadata, if any."""
    try:
        info = json.loads((table.schema.metadata or {}).get(b"huggingface", b"{}"))
        names = info["info"]["features"][column]["names"]
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _hf(cfg: DataSpec) -> tuple[Split, Split, list[str]] | tuple[Split, Split, list[str], Tree]:
    """A Hugging Face dataset: a Parquet file (read with pyarrow), or a folder saved by `save_to_disk` (needs
    the datasets package). Images are encoded bytes (or {bytes, path} structs); labels integers or names."""
    path = Path(cfg.data_root).expanduser()
    table, known = _saved_table(path, cfg.label_column) if path.is_dir() else _parquet_table(path, cfg.label_column)
    columns = [cfg.image_column, cfg.label_column] + ([cfg.fine_column] if cfg.fine_column else [])
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise AuxgenError(f"hf: {path} has no column {missing[0]!r} (it has {', '.join(table.column_names)}); "
                          f"name the columns with --image-column, --label-column, --fine-column")
    if table.num_rows == 0:
        raise AuxgenError(f"hf: {path} has no rows; a dataset needs labelled images")
    cells = table.column(cfg.image_column).to_pylist()
    raw = []
    for i, c in enumerate(cells):
        b = c.get("bytes") if isinstance(c, dict) else c
        if not isinstance(b, bytes):
            raise AuxgenError(f"hf: {path} row {i + 1}: column {cfg.image_column!r} holds no encoded image bytes "
                              f"({type(b).__name__}); a path-only image is not read")
        raw.append((b, f"row {i + 1} of {path}"))
    src = _Source("hf", str(path))
    labels, names = _classes(table.column(cfg.label_column).to_pylist(), src, known)
    images = _decode_images(raw, cfg.image_size, "hf")
    fines = table.column(cfg.fine_column).to_pylist() if cfg.fine_column else None
    full = Split(images, torch.tensor(labels, dtype=torch.long), [f"row/{i:06d}" for i in range(len(raw))])
    return _labelled(full, names, fines, src)


def _parquet_table(path: Path, label_column: str) -> tuple[Any, list[str] | None]:
    """A Parquet file's table and the ClassLabel names of its label column, if recorded."""
    from auxgen.paths import check_regular_file

    check_regular_file(path, "hf: --data-root")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AuxgenError("hf: reading Parquet needs the pyarrow package (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # ArrowInvalid: not Parquet, truncated
        raise AuxgenError(f"hf: {path} is not a Parquet file ({one_line(e, 120)})") from None
    return table, _parquet_class_names(table, label_column)


def _saved_table(path: Path, label_column: str) -> tuple[Any, list[str] | None]:
    """The train split of a save_to_disk folder (a Dataset, or a DatasetDict's `train`) and its ClassLabel names.

    Only the train split is opened, and only after every file its state.json names is checked to lie inside
    its folder: the folder is someone else's, and must not make us read a file elsewhere."""
    try:
        import datasets
    except ImportError:
        raise AuxgenError(f"hf: {path} is a folder; reading a save_to_disk folder needs the datasets package "
                          f"(pip install datasets), or give a .parquet file") from None
    folder = _train_folder(path)
    _check_saved_files(folder)
    try:
        ds = datasets.Dataset.load_from_disk(str(folder))
    except Exception as e:
        raise AuxgenError(f"hf: {path} is not a dataset saved with save_to_disk ({one_line(e, 120)})") from None
    feature = ds.features.get(label_column)
    known = list(feature.names) if isinstance(getattr(feature, "names", None), list) else None
    return ds.flatten_indices().data.table, known


def _saved_json(folder: Path, name: str) -> Any:
    """A save_to_disk folder's JSON file, confined to the folder; None where absent."""
    from auxgen.paths import confined

    target = confined(folder, name)
    if target is None:
        raise AuxgenError(f"hf: {folder / name} leads outside {folder}; refusing to read it")
    if not target.exists():
        return None
    problem = regular_file_problem(target)
    if problem:
        raise AuxgenError(f"hf: {target} {problem}")
    try:
        return json.loads(target.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise AuxgenError(f"hf: {target} is not JSON ({one_line(e, 120)})") from None


def _train_folder(path: Path) -> Path:
    """The folder of the train split: `path` itself when it holds a Dataset, else its DatasetDict's `train`."""
    from auxgen.paths import confined

    if (path / "state.json").exists():
        return path
    splits = _saved_json(path, "dataset_dict.json")
    if not isinstance(splits, dict) or not isinstance(splits.get("splits"), list):
        raise AuxgenError(f"hf: {path} is not a dataset saved with save_to_disk (no state.json, nor a "
                          f"dataset_dict.json listing splits)")
    if "train" not in splits["splits"]:
        names = ", ".join(str(s) for s in splits["splits"]) or "none"
        raise AuxgenError(f"hf: {path} has splits {names} but no train split")
    folder = confined(path, "train")
    if folder is None:
        raise AuxgenError(f"hf: {path / 'train'} leads outside {path}; refusing to read it")
    return folder


def _check_saved_files(folder: Path) -> None:
    """Every data file a save_to_disk state.json names is a regular file inside its folder (a name like
    `../../x.arrow`, an absolute path, or a link that leads out is refused)."""
    from auxgen.paths import confined

    state = _saved_json(folder, "state.json")
    _saved_json(folder, "dataset_info.json")  # read by datasets too: it must not lead out either
    files = state.get("_data_files") if isinstance(state, dict) else None
    if files == []:  # how save_to_disk saves an empty dataset
        raise AuxgenError(f"hf: {folder} has no rows (its state.json lists no data files); a dataset needs "
                          f"labelled images")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise AuxgenError(f"hf: {folder / 'state.json'} lists no data files (_data_files); is this a folder "
                          f"saved with save_to_disk?")
    for f in files:
        name = f.get("filename")
        target = confined(folder, name)
        if target is None:
            raise AuxgenError(f"hf: {folder / 'state.json'} names data file {name!r}, which is not inside "
                              f"{folder}; refusing to read it")
        problem = regular_file_problem(target)
        if problem:
            raise AuxgenError(f"hf: {target} {problem}")


# ------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the registry: its loader and the facts the rest of auxgen asks about it."""

    # -> train, test, class names[, (primary class of each fine class, fine names)] where it reads fine labels
    load: Callable[[DataSpec], tuple[Any, ...]]
    channels: int  # of the stored images
    auto_augment: bool  # --augment auto crops and flips it (32x32 RGB sets and ImageFolder)
    downloads: bool  # torchvision can fetch it (--download)
    human: str | None = None  # how it gives fine (human) labels for --method human, if it can
    # its images are files decoded by `_decode_images` (fitted to --image-size, RGB), not stored arrays: an
    # export says so (`image_fit`), so readers decoding the same files present them alike
    fitted: bool = False


# The one list of datasets: `--dataset` choices and help come from it; a new dataset is one entry
# (and its loader above).
DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(_digits, channels=1, auto_augment=False, downloads=False,
                           human="--dataset digits with --primary-groups 2|5"),
    "cifar10": DatasetEntry(_cifar, channels=3, auto_augment=True, downloads=True),
    "cifar100": DatasetEntry(_cifar, channels=3, auto_augment=True, downloads=True, human="--dataset cifar100"),
    "mnist": DatasetEntry(_mnist, channels=1, auto_augment=False, downloads=True),
    "fashion-mnist": DatasetEntry(_mnist, channels=1, auto_augment=False, downloads=True),
    "svhn": DatasetEntry(_svhn, channels=3, auto_augment=True, downloads=True),
    "imagefolder": DatasetEntry(_imagefolder, channels=3, auto_augment=True, downloads=False, fitted=True,
                                human="an imagefolder with --hierarchy-depth 2"),
    "csv": DatasetEntry(_csv, channels=3, auto_augment=True, downloads=False, fitted=True,
                        human="a csv list with a third (fine label) column"),
    "hf": DatasetEntry(_hf, channels=3, auto_augment=True, downloads=False, fitted=True,
                       human="--dataset hf with --fine-column"),
}
