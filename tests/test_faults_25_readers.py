"""Issue 25 (files from others, again) on the readers: report of an export that is not whole, the pipelines
readers on foreign or damaged files (ONNX external data, image files, parquet tables), and issue 26's one copy
of the view rule in pipelines/."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import _common, numpy_reader, onnx_refresh, refresh, torch_frozen  # noqa: E402


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """A script's failure: non-zero exit, one `error:` line naming the problem, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: "), r.stderr
    return r.stderr


def script(name: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / name), *map(str, args)], capture_output=True,
                          text=True, cwd="/")


def reseal(manifest: Path, name: str, data: bytes) -> None:
    """The manifest's size and sha256 of `name` (and of its generator entry) made those of `data`, as a forger
    who knows the format would."""
    man = json.loads(manifest.read_text())
    for entry in [*man["files"], *(man.get("generators") or [])]:
        if entry["path"] == name:
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest.write_text(json.dumps(man))


# ------------------------------------------------------------------------------ 1. report of an export not whole
@pytest.fixture(scope="module")
def few_shards(tiny_run, tmp_path_factory) -> Path:
    from auxgen.export import export_labels

    out = tmp_path_factory.mktemp("shards") / "lab"
    export_labels(tiny_run, out, "wds", images=False, max_count=400)
    assert len(list(out.glob("train-*.tar"))) >= 3
    return out


def test_report_refuses_a_shard_folder_with_a_fifo_as_verify_fails_it(tiny_run, few_shards, tmp_path, cli):
    from auxgen.verify import verify

    folder = tmp_path / "lab"
    shutil.copytree(few_shards, folder)
    (folder / "train-000001.tar").unlink()
    os.mkfifo(folder / "train-000001.tar")
    assert verify(tiny_run, folder).checks[1].status == "fail"  # what the report now agrees with
    code, out, err = cli("report", tiny_run, "--out", tmp_path / "r", "--labels", folder, "--max-samples", "50")
    assert code != 0 and "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a whole export" in lines[0] and "train-000001.tar" in lines[0], err
    assert not (tmp_path / "r").exists()  # nothing drawn from the rest


def test_report_refuses_a_shard_the_manifest_does_not_list(tiny_run, few_shards, tmp_path):
    """The manifest check verify makes beyond the file hashes (an extra shard) is the report's too."""
    from auxgen.errors import AuxgenError
    from auxgen.report.builder import build_report

    folder = tmp_path / "lab"
    shutil.copytree(few_shards, folder)
    shutil.copy(folder / "train-000000.tar", folder / "train-000099.tar")
    with pytest.raises(AuxgenError, match="not a whole export.*train-000099.tar"):
        build_report([tiny_run], tmp_path / "r", labels=folder, max_samples=50)


def test_report_of_a_whole_export_still_draws(tiny_run, few_shards, tmp_path):
    from auxgen.report.builder import build_report

    build_report([tiny_run], tmp_path / "r", labels=few_shards, max_samples=50)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["labels"]["source"] == "export"


# ------------------------------------------------------------------------------ 2. ONNX external data
@pytest.fixture(scope="module")
def h5_onnx(tiny_run, tmp_path_factory) -> Path:
    from auxgen.export import export_labels

    out = tmp_path_factory.mktemp("h5onnx") / "l.h5"
    export_labels(tiny_run, out, "hdf5", generator_formats="onnx")
    return out


@pytest.fixture(scope="module")
def train_images(tiny_run, tmp_path_factory) -> Path:
    from auxgen.run import load_run, load_run_data

    path = tmp_path_factory.mktemp("imgs") / "train.npy"
    np.save(path, load_run_data(load_run(tiny_run)).train.images.numpy())
    return path


def test_onnx_refresh_names_external_data_outside_the_export_in_one_line(h5_onnx, train_images, tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    folder = tmp_path / "e"
    shutil.copytree(h5_onnx.parent, folder)
    gen = folder / "l.h5.generator.onnx"
    model = onnx.load(str(gen))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="../outside.bin", size_threshold=0)
    data = model.SerializeToString()
    gen.write_bytes(data)
    reseal(folder / "l.h5.manifest.json", gen.name, data)
    err = one_line_error(script("onnx_refresh.py", "--labels", folder / "l.h5", "--images", train_images,
                                "--epochs", "1"))
    assert "external data" in err and str(gen) in err
    with pytest.raises(_common.ExportError, match="external data"):  # the class, used from Python
        onnx_refresh.OnnxGenerator(gen)


def test_onnx_refresh_names_a_file_onnxruntime_cannot_load(h5_onnx, train_images, tmp_path):
    bad = tmp_path / "g.onnx"
    bad.write_bytes(b"not a model")
    err = one_line_error(script("onnx_refresh.py", "--labels", h5_onnx, "--generator", bad, "--images",
                                train_images, "--epochs", "1"))
    assert str(bad) in err and "cannot be loaded" in err


# ------------------------------------------------------------------------------ 4. --image-root at bad files
def _bomb_png() -> bytes:
    """A PNG header claiming 30000 x 30000 pixels: more than twice PIL's limit, so PIL refuses to decode it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder_export(tmp_path_factory) -> Path:
    """An ImageFolder run at --image-size 8 and its HDF5 (with ONNX) and parquet exports."""
    from auxgen.export import export_labels
    from auxgen.trainer import train
    from tests.conftest import tiny_config, write_imagefolder

    base = tmp_path_factory.mktemp("folder")
    images = write_imagefolder(base / "images", per_class=4)
    train(tiny_config(dataset="imagefolder", data_root=str(images), image_size=8, epochs=1, batch_size=4),
          base / "run", show=False)
    export_labels(base / "run", base / "l.h5", "hdf5", generator_formats="onnx")
    export_labels(base / "run", base / "pq", "parquet")
    return base


@pytest.mark.parametrize("damage", ["missing", "garbage", "bomb", "fifo"])
@pytest.mark.parametrize("reader", ["numpy_reader.py", "parquet_reader.py", "onnx_refresh.py"])
def test_image_root_with_a_bad_image_is_one_line_naming_it(folder_export, tmp_path, damage, reader):
    root = tmp_path / "images"
    shutil.copytree(folder_export / "images", root)
    victim = root / numpy_reader.LabelFile(str(folder_export / "l.h5")).splits["train"]["keys"][0]
    victim.unlink()
    if damage == "garbage":
        victim.write_bytes(b"this is not an image at all")
    elif damage == "bomb":
        victim.write_bytes(_bomb_png())
    elif damage == "fifo":
        os.mkfifo(victim)
    labels = folder_export / ("pq" if reader == "parquet_reader.py" else "l.h5")
    args = ["--labels", labels] if reader == "onnx_refresh.py" else [labels]
    r = script(reader, *args, "--image-root", root, *(["--epochs", "1"] if reader == "onnx_refresh.py" else []))
    err = one_line_error(r)
    assert victim.name in err, err
    assert "error: 2" not in err


def test_image_root_that_is_not_a_folder_is_one_line(folder_export, tmp_path):
    err = one_line_error(script("numpy_reader.py", folder_export / "l.h5", "--image-root", tmp_path / "nowhere"))
    assert "nowhere" in err


def test_torch_frozen_image_loader_names_a_garbage_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(_common.ExportError, match="cannot read image .*x.png"):
        _common.open_image(bad)


def test_run_main_never_prints_a_bare_errno(capsys):
    def fails():
        open("/nonexistent/place/x.png", "rb")
    with pytest.raises(SystemExit) as e:
        _common.run_main(fails)
    assert "No such file or directory" in str(e.value.code) and "/nonexistent/place/x.png" in str(e.value.code)


# ------------------------------------------------------------------------------ issue 26, 6: one view rule
def test_pipelines_hold_one_copy_of_the_view_rule():
    assert numpy_reader.apply_view is _common.apply_view and torch_frozen.apply_view is _common.apply_view
    assert onnx_refresh.apply_views is _common.apply_views and refresh.apply_views is _common.apply_views
    for path in (ROOT / "pipelines").glob("*.py"):  # padding for a crop is the rule's first step
        if path.name != "_common.py":
            text = path.read_text()
            assert "np.pad(" not in text and "F.pad(" not in text, path.name


def test_the_one_view_rule_is_auxgens_for_numpy_torch_and_any_channel_dims():
    import torch

    from auxgen.data import apply_views, draw_views

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 2, 5, 7), dtype=torch.uint8, generator=g)
    views = draw_views(12, 2, g)
    ref = apply_views(images, views, 2)
    assert torch.equal(_common.apply_views(images, views, 2), ref)
    assert np.array_equal(_common.apply_views(images.numpy(), views.numpy(), 2), ref.numpy())
    assert np.array_equal(_common.apply_view(images[3, 0].numpy(), views[3].tolist(), 2), ref[3, 0].numpy())
    grey = images[:, :1]  # one channel, and no channel dim at all
    assert torch.equal(_common.apply_views(grey[:, 0], views, 2), apply_views(grey, views, 2)[:, 0])


# ------------------------------------------------------------------------------ 3. parquet: reader and verify agree
def table_of(folder: Path, split: str) -> Path:
    """A split's table in either layout (hive `split=S/part-0.parquet`, or the older `S.parquet`)."""
    hive = folder / f"split={split}" / "part-0.parquet"
    return hive if hive.exists() else folder / f"{split}.parquet"


def manifest_in(folder: Path) -> Path:
    return folder / "_manifest.json" if (folder / "_manifest.json").exists() else folder / "manifest.json"


def reseal_table(folder: Path, table: Path) -> None:
    reseal(manifest_in(folder), table.relative_to(folder).as_posix(), table.read_bytes())


@pytest.fixture(scope="module")
def pq_export(tiny_run, tmp_path_factory) -> Path:
    pytest.importorskip("pyarrow")
    from auxgen.export import export_labels

    out = tmp_path_factory.mktemp("pq") / "labels"
    export_labels(tiny_run, out, "parquet")
    return out


def _edit(table_path: Path, edit) -> None:
    """Rewrite a table through `edit(table) -> table`, keeping its auxgen metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(table_path)
    pq.write_table(edit(table).replace_schema_metadata(table.schema.metadata), table_path)


def _variable_soft(table):
    import pyarrow as pa

    soft = table.column("aux_soft").combine_chunks()
    ragged = pa.ListArray.from_arrays(pa.array(np.arange(len(soft) + 1, dtype=np.int32) * soft.type.list_size),
                                      soft.flatten())
    return table.set_column(table.column_names.index("aux_soft"), "aux_soft", ragged)


def _string_index(table):
    import pyarrow as pa

    strings = pa.array([str(i) for i in table.column("index").to_pylist()])
    return table.set_column(table.column_names.index("index"), "index", strings)


DAMAGE = {
    "duplicated": (lambda t: __import__("pyarrow").concat_tables([t, t.slice(0, 5)]), "rows"),
    "reversed": (lambda t: t.take(np.arange(t.num_rows)[::-1].copy()), "index order|indices 0"),
    "variable-list": (_variable_soft, "fixed-size lists"),
    "reversed-variable-list": (lambda t: _variable_soft(t.take(np.arange(t.num_rows)[::-1].copy())),
                               "fixed-size lists|index order|indices 0"),
    "string-index": (_string_index, "index .*string|string.*index|not numbers"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_parquet_reader_and_verify_agree_on_a_resealed_table(tiny_run, pq_export, tmp_path, damage):
    from auxgen.verify import verify
    from pipelines import parquet_reader

    folder = tmp_path / "labels"
    shutil.copytree(pq_export, folder)
    edit, expected = DAMAGE[damage]
    table = table_of(folder, "train")
    _edit(table, edit)
    reseal_table(folder, table)
    report = verify(tiny_run, folder, sample=16)  # never a traceback
    integrity = next(c for c in report.checks if c.name == "integrity")
    assert integrity.status == "fail" and "\n" not in integrity.reason, integrity.reason
    with pytest.raises(_common.ExportError, match=expected):
        parquet_reader.LabelTable(str(folder))


def test_parquet_reader_refuses_swapped_tables(tiny_run, pq_export, tmp_path):
    from auxgen.verify import verify
    from pipelines import parquet_reader

    folder = tmp_path / "labels"
    shutil.copytree(pq_export, folder)
    train, test = table_of(folder, "train"), table_of(folder, "test")
    data_train, data_test = train.read_bytes(), test.read_bytes()
    train.write_bytes(data_test)
    test.write_bytes(data_train)
    reseal_table(folder, train)
    reseal_table(folder, test)
    assert not verify(tiny_run, folder, sample=16).passed
    with pytest.raises(_common.ExportError, match="swapped"):
        parquet_reader.LabelTable(str(folder))


def test_parquet_reader_script_names_the_problem_in_one_line(pq_export, tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(pq_export, folder)
    table = table_of(folder, "train")
    _edit(table, DAMAGE["duplicated"][0])
    reseal_table(folder, table)
    err = one_line_error(script("parquet_reader.py", folder))
    assert "rows" in err and table.name in err
