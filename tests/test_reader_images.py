"""pipelines/ present ImageFolder images exactly as auxgen decoded them when it computed the labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import _common, numpy_reader, onnx_refresh, parquet_reader, torch_frozen  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

SIZE = 16


def write_mixed_folder(root: Path) -> Path:
    """Two classes of images in every size, shape and mode a user's folder holds (PIL writes them)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    shapes = [(20, 24), (48, 48), (17, 31), (40, 12), (16, 16), (33, 33)]
    for c, cls in enumerate(("ant", "bee")):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = {0: Image.fromarray(rgb), 1: Image.fromarray(rgb[..., 0], "L"),
                   2: Image.fromarray(rgb).convert("RGBA"),
                   3: Image.fromarray(rgb[..., 1].astype(np.uint16) * 257)}[(i + c) % 4]
            img.save(root / cls / f"{cls}_{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """An ImageFolder of mixed sizes, a 1-epoch run on it at --image-size 16, its HDF5 and parquet exports."""
    from auxgen.export import export_labels
    from auxgen.run import load_run, load_run_data
    from auxgen.trainer import train

    base = tmp_path_factory.mktemp("mixed")
    folder = write_mixed_folder(base / "images")
    cfg = tiny_config(dataset="imagefolder", data_root=str(folder), image_size=SIZE, epochs=1, batch_size=4)
    train(cfg, base / "run", show=False)
    export_labels(base / "run", base / "l.h5", "hdf5", generator_formats="onnx")
    export_labels(base / "run", base / "pq", "parquet")
    export_labels(base / "run", base / "lab", "wds", images=False)
    return base, load_run_data(load_run(base / "run"))


def test_fit_image_is_auxgens_decoding(tmp_path):
    from auxgen.compose import data_spec
    from auxgen.data import load_data

    folder = write_mixed_folder(tmp_path / "f")
    data = load_data(data_spec(tiny_config(dataset="imagefolder", data_root=str(folder), image_size=SIZE)))
    for split in (data.train, data.test):
        for key, image in zip(split.keys, split.images, strict=True):
            mine = _common.fit_image(_common.open_image(folder / key), (3, SIZE, SIZE))
            assert mine.shape == (3, SIZE, SIZE) and np.array_equal(mine, image.numpy()), key


def test_the_export_records_the_image_shape_and_fit(folder_run):
    base, _ = folder_run
    lf = numpy_reader.LabelFile(str(base / "l.h5"))
    assert _common.export_image_shape(lf.attrs) == (3, SIZE, SIZE) and _common.export_fits(lf.attrs)
    manifest = _common.read_manifest(base / "pq" / "_manifest.json")
    assert manifest["image_shape"] == [3, SIZE, SIZE] and manifest["image_fit"] == "fit"


def test_torch_frozen_fits_a_torchvision_imagefolder(folder_run):
    from torchvision import datasets

    base, data = folder_run
    for loader in (_common.open_image, None):  # ours, and torchvision's own (RGB) loader
        kw = {"loader": loader} if loader else {}
        ds = torch_frozen.FrozenLabels(datasets.ImageFolder(str(base / "images"), **kw), base / "l.h5", "train")
        index = torch_frozen.read_split(base / "l.h5", "train")["index"]
        for j in range(len(ds)):
            image, primary, _ = ds[j]
            if loader or ds.keys[j] not in ("ant/ant_3.png", "bee/bee_2.png"):  # its loader clips 16-bit grey
                assert torch.equal(image, data.train.images[index[j]]), ds.keys[j]
            assert image.shape == (3, SIZE, SIZE) and primary == int(data.train.labels[index[j]])
        batch = torch_frozen.collate([ds[j] for j in range(len(ds))])  # mixed sizes stack
        assert batch[0].shape == (len(ds), 3, SIZE, SIZE)


def test_torch_frozen_refuses_images_of_another_shape(folder_run):
    base, data = folder_run
    wrong = torch_frozen.ArrayDataset(np.zeros((len(data.train), 3, 48, 48), np.uint8), np.zeros(len(data.train)))
    ds = torch_frozen.FrozenLabels(wrong, base / "l.h5", "train", locate=lambda k: data.train.keys.index(k))
    with pytest.raises(_common.ExportError, match="3x48x48 image but the labels were computed on 3x16x16"):
        ds[0]


@pytest.mark.parametrize("reader", ["hdf5", "parquet"])
def test_numpy_readers_build_the_split_order_array(folder_run, reader):
    base, data = folder_run
    lf = numpy_reader.LabelFile(str(base / "l.h5")) if reader == "hdf5" else parquet_reader.LabelTable(str(base / "pq"))
    for split in ("train", "test"):
        assert np.array_equal(lf.folder_images(str(base / "images"), split), getattr(data, split).images.numpy())


def test_folder_images_refuses_an_export_of_stored_arrays(tiny_run, tmp_path):
    from auxgen.export import export_labels

    export_labels(tiny_run, tmp_path / "d.h5", "hdf5")
    with pytest.raises(_common.ExportError, match="not image files named by their keys"):
        numpy_reader.LabelFile(str(tmp_path / "d.h5")).folder_images(str(tmp_path))


def test_torch_frozen_script_trains_on_a_mixed_size_folder(folder_run):
    base, _ = folder_run
    r = subprocess.run([sys.executable, str(ROOT / "pipelines" / "torch_frozen.py"), "--labels", str(base / "l.h5"),
                        "--dataset", "imagefolder", "--data-root", str(base / "images"), "--epochs", "1",
                        "--width", "4", "--batch-size", "4"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and "epoch 1: loss" in r.stdout, r.stderr


def test_numpy_model_trains_on_rgb_without_diverging(folder_run):
    """Raw 0..1 RGB pixels at lr 0.5 went 2.5 -> 20; standardised ones train at the default lr, below a batch too."""
    base, _ = folder_run
    lf = numpy_reader.LabelFile(str(base / "l.h5"))
    images = lf.folder_images(str(base / "images"))
    losses = numpy_reader.fit_softmax(lf, images, steps=30, batch_size=256)  # more than the split holds
    assert max(losses) < losses[0] + 0.1 and np.mean(losses[-5:]) < losses[0] - 0.1, losses


def test_onnx_refresh_script_trains_from_the_image_folder(folder_run, capsys):
    base, _ = folder_run
    result = onnx_refresh.main(["--labels", str(base / "l.h5"), "--image-root", str(base / "images"),
                                "--epochs", "6", "--every", "3", "--batch-size", "4", "--threads", "1"])
    epochs = result["epochs"]  # a refresh changes the targets (a step up), but nothing runs away
    assert max(epochs) < 1.5 * epochs[0] and epochs[-1] < epochs[0], epochs


def test_numpy_reader_script_takes_an_image_root_and_lr(folder_run, capsys):
    base, _ = folder_run
    numpy_reader.main([str(base / "l.h5"), "--image-root", str(base / "images"), "--steps", "5", "--lr", "1"])
    assert "over 5 steps" in capsys.readouterr().out


def test_wds_stream_fits_your_own_image_shards(folder_run, tmp_path):
    """Image shards of your own (the original mixed-size files) joined to label-only shards by key."""
    import tarfile
    from urllib.parse import unquote

    from pipelines import wds_stream

    base, data = folder_run
    labels = wds_stream.label_table(wds_stream.shard_urls(base / "lab", "train"))
    own = tmp_path / "own"
    own.mkdir()
    with tarfile.open(own / "train-000000.tar", "w") as tar:
        for key in labels:
            tar.add(base / "images" / unquote(key), arcname=f"{key}.png")
    manifest = wds_stream.read_manifest(base / "lab")
    batch = next(iter(wds_stream.stream(wds_stream.shard_urls(own, "train"), batch_size=len(labels), shuffle=0,
                                        labels=labels, manifest=manifest)))
    rows = {k: i for i, k in enumerate(data.train.keys)}
    want = torch.stack([data.train.images[rows[unquote(k)]] for k in labels])
    assert torch.equal(batch[0], want)


@pytest.mark.parametrize("shape", [[3, 100_000, 100_000], [3, 0, 32], [4, 32, 32], [3, 32], ["3", 32, 32], 7,
                                   [3, 32.5, 32]])
def test_a_crafted_image_shape_is_refused_in_one_line(shape):
    """A reader sizes its images by the export's image_shape: a crafted one must not make it allocate any size."""
    with pytest.raises(_common.ExportError, match="not \\[C, H, W\\]") as e:
        _common.export_image_shape({"image_shape": shape})
    assert "\n" not in str(e.value)
