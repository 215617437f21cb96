"""Inputs beside ImageFolder (issue 18): a CSV list of PATH,LABEL[,FINE] and a Hugging Face dataset as
Parquet (or a save_to_disk folder), decoded by the same path as ImageFolder images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import tiny_config

from auxgen.compose import load_data
from auxgen.errors import AuxgenError


def _png(rng, size=(10, 14)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_csv(root, rows_per=4, fine=False, header=True):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = ["path,label,fine" if fine else "path,label"] if header else []
    for c in ("cat", "dog"):
        for i in range(rows_per):
            (root / "img" / f"{c}{i}.png").write_bytes(_png(rng))
            lines.append(f"img/{c}{i}.png,{c}" + (f",{c}-{i % 2}" if fine else ""))
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def test_csv_loads_and_trains(tmp_path):
    from auxgen.trainer import train

    listed = write_csv(tmp_path / "d")
    data = load_data(tiny_config(dataset="csv", data_root=str(listed), image_size=8))
    assert data.class_names == ["cat", "dog"] and data.image_shape == (3, 8, 8)
    assert len(data.train) + len(data.test) == 8 and data.fine_parent is None
    assert sorted(data.train.keys + data.test.keys)[0] == "img/cat0.png"
    from PIL import Image, ImageOps

    with Image.open(tmp_path / "d" / "img" / "cat0.png") as img:  # the ImageFolder decoding, exactly
        want = np.asarray(ImageOps.fit(img.convert("RGB"), (8, 8), Image.BILINEAR))
    keys = data.train.keys + data.test.keys
    images = torch.cat([data.train.images, data.test.images])
    assert np.array_equal(images[keys.index("img/cat0.png")].permute(1, 2, 0).numpy(), want)
    train(tiny_config(dataset="csv", data_root=str(listed), image_size=8, width=4, epochs=1, batch_size=4),
          tmp_path / "run", show=False)
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_csv_fine_column_gives_the_two_level_hierarchy(tmp_path):
    from auxgen.compose import hierarchy_for

    cfg = tiny_config(dataset="csv", data_root=str(write_csv(tmp_path / "d", fine=True)), image_size=8,
                      method="human")
    data = load_data(cfg)
    assert data.fine_parent == [0, 0, 1, 1] and data.fine_names == ["cat/cat-0", "cat/cat-1", "dog/dog-0", "dog/dog-1"]
    hier, fine_to_aux = hierarchy_for(cfg, data)
    assert hier.psi == (2, 2) and fine_to_aux is not None


@pytest.mark.parametrize("row, message", [
    ("../outside.png,cat", "is not a relative path inside"),
    ("/etc/passwd,cat", "is not a relative path inside"),
    ("img/missing.png,cat", "does not exist"),
    ("img/cat0.png", "has 1 fields"),
    ("img/cat0.png,cat", "lists img/cat0.png twice"),
])
def test_csv_bad_rows_are_one_line(tmp_path, row, message):
    listed = write_csv(tmp_path / "d")
    (tmp_path / "outside.png").write_bytes(b"x")
    listed.write_text(listed.read_text() + row + "\n")
    with pytest.raises(AuxgenError, match=message) as e:
        load_data(tiny_config(dataset="csv", data_root=str(listed), image_size=8))
    assert "\n" not in str(e.value)


def test_csv_not_an_image_names_the_file(tmp_path):
    listed = write_csv(tmp_path / "d")
    (tmp_path / "d" / "img" / "dog1.png").write_bytes(b"")
    with pytest.raises(AuxgenError, match=r"csv: cannot read image .*dog1.png: the file is empty"):
        load_data(tiny_config(dataset="csv", data_root=str(listed), image_size=8))


def write_parquet(path, n=10, fine=True, struct=True):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(1)
    images = [_png(rng) for _ in range(n)]
    cols = {"img": [{"bytes": b, "path": None} for b in images] if struct else images,
            "y": [i % 2 for i in range(n)]}
    if fine:
        cols["sub"] = [f"s{i % 3}" for i in range(n)]
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_loads_and_trains(tmp_path):
    from auxgen.trainer import train

    path = write_parquet(tmp_path / "d.parquet")
    cfg = tiny_config(dataset="hf", data_root=str(path), image_column="img", label_column="y", fine_column="sub",
                      image_size=8, width=4, epochs=1, batch_size=4)
    data = load_data(cfg)
    assert data.class_names == ["0", "1"] and data.image_shape == (3, 8, 8)
    assert data.fine_parent == [0, 0, 0, 1, 1, 1] and data.train.fine is not None
    train(cfg, tmp_path / "run", show=False)
    plain = write_parquet(tmp_path / "p.parquet", fine=False, struct=False)
    assert load_data(tiny_config(dataset="hf", data_root=str(plain), image_column="img", label_column="y",
                                 image_size=8)).fine_parent is None


def test_hf_bad_inputs_are_one_line(tmp_path):
    path = write_parquet(tmp_path / "d.parquet")
    with pytest.raises(AuxgenError, match="has no column 'image' .*--image-column"):
        load_data(tiny_config(dataset="hf", data_root=str(path), image_size=8))
    (tmp_path / "x.parquet").write_bytes(b"nope")
    with pytest.raises(AuxgenError, match="is not a Parquet file"):
        load_data(tiny_config(dataset="hf", data_root=str(tmp_path / "x.parquet"), image_size=8))
    with pytest.raises(AuxgenError, match="--fine-column is for --dataset hf"):
        tiny_config(fine_column="sub")


def test_hf_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png(rng), "path": None} for _ in range(10)],
                                     "label": [i % 2 for i in range(10)]})
    ds = ds.cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=["ant", "bee"]))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    data = load_data(tiny_config(dataset="hf", data_root=str(tmp_path / "saved"), image_size=8))
    assert len(data.train) + len(data.test) == 10 and data.class_names == ["ant", "bee"]
    ds.to_parquet(str(tmp_path / "d.parquet"))  # Hugging Face's Parquet records the names too
    data = load_data(tiny_config(dataset="hf", data_root=str(tmp_path / "d.parquet"), image_size=8))
    assert data.class_names == ["ant", "bee"]


def test_empty_labels_name_their_row(tmp_path):
    listed = write_csv(tmp_path / "d", fine=True)
    listed.write_text(listed.read_text().replace("img/dog1.png,dog,dog-1", "img/dog1.png,dog, "))
    with pytest.raises(AuxgenError, match=r"csv: .*list.csv line 7 has an empty fine label"):
        load_data(tiny_config(dataset="csv", data_root=str(listed), image_size=8))
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(3)
    pq.write_table(pa.table({"image": [_png(rng) for _ in range(6)], "label": ["a", "b", None, "a", "b", "a"]}),
                   tmp_path / "n.parquet")
    with pytest.raises(AuxgenError, match="hf: row 3 has an empty label"):
        load_data(tiny_config(dataset="hf", data_root=str(tmp_path / "n.parquet"), image_size=8))
