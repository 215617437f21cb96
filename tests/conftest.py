"""Shared fixtures: tiny datasets written in their real on-disk formats, and a tiny trained run."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from auxgen.config import TrainConfig

torch.set_num_threads(1)  # the suite runs on 2 cores; keep runs deterministic and cheap


def write_cifar(root: Path, which: str = "cifar10", n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 or CIFAR-100 set in the real python-pickle format under root."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        if which == "cifar10":
            return {"data": data, "labels": rng.integers(0, 10, n).tolist()}
        fine = rng.integers(0, 100, n)
        return {"data": data, "fine_labels": fine.tolist(), "coarse_labels": fine.tolist()}

    if which == "cifar10":
        per = n_train // 5
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per)))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    else:
        from auxgen.hierarchy import CIFAR100_FINE_NAMES, cifar100_names
        (folder / "train").write_bytes(pickle.dumps(batch(n_train)))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test)))
        meta = {"fine_label_names": list(CIFAR100_FINE_NAMES), "coarse_label_names": list(cifar100_names(20))}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "owl"), per_class: int = 8,
                      size: int = 20, seed: int = 0) -> Path:
    """Write a tiny ImageFolder tree of PNG files (odd sizes, so resizing is exercised)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{c}_{i:03d}.png")
    return root


def tiny_config(**kw) -> TrainConfig:
    """A config that trains in about a second on digits."""
    # MAXL with its meta-gradient (look-ahead) and shifted-view pairs: the machinery most tests exercise; the
    # defaults (no meta-gradient, neighbour pairs) are what the CLI tests run
    base = dict(dataset="digits", backbone="cnn", width=8, epochs=2, batch_size=64, lr=0.05,
                gen_lr=0.05, seed=0, device="cpu", meta_weight=1.0, consistency_weight=0.0, pairs="views",
                meta_every=1)
    base.update(kw)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch MAXL run on digits (cnn, width 8, psi 5). Do not modify it."""
    from auxgen.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), out, show=False)
    return out


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 12, seed: int = 0) -> Path:
    """Write a tiny MNIST (or FashionMNIST) in the real idx format under root/FOLDER/raw."""
    import struct

    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


def run_cli(args, capsys, monkeypatch) -> tuple[int, str, str]:
    """auxgen's console entry point in this process: (exit code, stdout, stderr)."""
    import sys

    from auxgen.cli import main

    monkeypatch.setattr(sys, "argv", ["auxgen", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli("train", ...) -> (exit code, stdout, stderr)."""
    return lambda *args: run_cli(args, capsys, monkeypatch)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one (tests/test_cuda.py)")


def pytest_collection_modifyitems(config, items):
    """Skip the `cuda` tests where CUDA is absent, unless AUXGEN_CUDA_TESTS_DEVICE=cpu rehearses them on the CPU."""
    import os

    if torch.cuda.is_available() or os.environ.get("AUXGEN_CUDA_TESTS_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (AUXGEN_CUDA_TESTS_DEVICE=cpu rehearses on the CPU)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
