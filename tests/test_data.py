"""Dataset loaders on tiny files in their real formats, and the augmentation views."""

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_cifar, write_imagefolder, write_mnist

from auxgen.compose import load_data
from auxgen.data import apply_views, draw_views
from auxgen.errors import AuxgenError


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN stores digit 0 as label 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    d = load_data(tiny_config(dataset="svhn", data_root=str(tmp_path)))
    assert d.image_shape == (3, 32, 32) and len(d.train) == 30 and d.augment
    assert d.train.labels.min() >= 0 and d.train.labels.max() <= 9
    ref = x[:, :, :, 0].transpose(2, 0, 1)  # x is the test split: its first image, channels first
    assert np.array_equal(d.test.images[0].numpy(), ref)


def test_mnist_and_fashion_idx(tmp_path):
    write_mnist(tmp_path, "MNIST")
    write_mnist(tmp_path, "FashionMNIST", n_train=20, n_test=6)
    m = load_data(tiny_config(dataset="mnist", data_root=str(tmp_path)))
    f = load_data(tiny_config(dataset="fashion-mnist", data_root=str(tmp_path)))
    assert m.image_shape == (1, 28, 28) and len(m.train) == 40 and not m.augment
    assert len(f.train) == 20 and f.train.keys[0] == "fashion-mnist/train/000000"


def test_cifar100_levels_and_keys(tmp_path):
    write_cifar(tmp_path, "cifar100", n_train=30, n_test=10)
    d3 = load_data(tiny_config(dataset="cifar100", data_root=str(tmp_path), primary_level=3))
    d20 = load_data(tiny_config(dataset="cifar100", data_root=str(tmp_path), primary_level=20))
    assert d3.num_classes == 3 and d20.num_classes == 20
    assert torch.equal(d3.train.fine, d20.train.fine)
    assert d3.train.keys[5] == "cifar100/train/000005"
    with pytest.raises(AuxgenError, match="primary-level"):
        load_data(tiny_config(dataset="cifar100", data_root=str(tmp_path), primary_level=100))


def test_imagefolder_split_and_test_root(tmp_path):
    write_imagefolder(tmp_path / "tr", per_class=10)
    write_imagefolder(tmp_path / "te", per_class=2, seed=1)
    d = load_data(tiny_config(dataset="imagefolder", data_root=str(tmp_path / "tr"), image_size=12))
    assert len(d.train) + len(d.test) == 30 and len(d.test) == 6
    assert set(d.train.keys).isdisjoint(d.test.keys)
    d2 = load_data(tiny_config(dataset="imagefolder", data_root=str(tmp_path / "tr"),
                               test_root=str(tmp_path / "te"), image_size=12))
    assert len(d2.train) == 30 and len(d2.test) == 6 and d2.image_shape == (3, 12, 12)
    write_imagefolder(tmp_path / "other", classes=("a", "b"), per_class=2)
    with pytest.raises(AuxgenError, match="class folders"):
        load_data(tiny_config(dataset="imagefolder", data_root=str(tmp_path / "tr"), test_root=str(tmp_path / "other")))


def test_views_are_crops_of_the_padded_image_and_flips():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    views = draw_views(5, 2, g)
    out = apply_views(x, views, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i, (dy, dx, flip) in enumerate(views.tolist()):
        crop = padded[i, :, dy:dy + 8, dx:dx + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip else crop)
    assert torch.equal(draw_views(5, 2, torch.Generator().manual_seed(0)), views)  # seeded


def test_imagefolder_needs_two_classes_with_images(tmp_path):
    write_imagefolder(tmp_path / "one", classes=("cat",), per_class=10)
    with pytest.raises(AuxgenError, match="at least 2 classes"):
        load_data(tiny_config(dataset="imagefolder", data_root=str(tmp_path / "one"), image_size=8))
    write_imagefolder(tmp_path / "two", classes=("cat", "dog"), per_class=5)
    (tmp_path / "two" / "emu").mkdir()
    with pytest.raises(AuxgenError, match="emu holds no images"):
        load_data(tiny_config(dataset="imagefolder", data_root=str(tmp_path / "two"), image_size=8))


def test_cifar_batch_problems_are_named(tmp_path):
    import pickle

    write_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    good = batch.read_bytes()
    cfg = tiny_config(dataset="cifar10", data_root=str(tmp_path))
    for content, msg in [(good[:-7], "is truncated"), (b"GIF89a", "is not a pickle file"),
                         (pickle.dumps(["a", "list"]), "is a pickle of a list, not a CIFAR batch"),
                         (pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}), "no 'labels' entry")]:
        batch.write_bytes(content)
        with pytest.raises(AuxgenError, match=msg):
            load_data(cfg)
