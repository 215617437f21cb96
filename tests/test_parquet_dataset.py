"""Issue 26, item 9: a parquet export is a folder pandas and pyarrow read as one table with a `split` column
(hive layout, manifest and generator files under names dataset readers skip); every reader and verify read it,
and the older layout (`train.parquet`, `manifest.json`, `generator.*`) of exports already written as well."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from auxgen.errors import AuxgenError  # noqa: E402
from auxgen.export import export_labels, read_export  # noqa: E402
from auxgen.verify import verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines import parquet_reader  # noqa: E402


@pytest.fixture(scope="module")
def hive(tiny_run, tmp_path_factory) -> Path:
    """A parquet export with an ONNX generator, as auxgen writes it now."""
    out = tmp_path_factory.mktemp("hive") / "labels"
    export_labels(tiny_run, out, "parquet", generator_formats="onnx")
    return out


def to_old_layout(hive: Path, folder: Path) -> Path:
    """The same export as auxgen wrote it before the hive layout: `train.parquet`, `manifest.json`,
    `generator.onnx` (the bytes of every file unchanged, so the manifest's hashes still hold)."""
    folder.mkdir()
    renames = {"_generator.onnx": "generator.onnx", **{f"split={s}/part-0.parquet": f"{s}.parquet"
                                                        for s in ("train", "test")}}
    for new, old in renames.items():
        shutil.copy(hive / new, folder / old)
    man = json.loads((hive / "_manifest.json").read_text())
    for entry in [*man["files"], *man["generators"]]:
        entry["path"] = renames[entry["path"]]
    man["generator"] = None
    (folder / "manifest.json").write_text(json.dumps(man))
    return folder


@pytest.fixture(scope="module")
def layouts(hive, tmp_path_factory) -> dict[str, Path]:
    return {"hive": hive, "old": to_old_layout(hive, tmp_path_factory.mktemp("old") / "labels")}


def counts(run_dir: Path) -> dict[str, int]:
    from auxgen.run import load_run, load_run_data

    data = load_run_data(load_run(run_dir))
    return {"train": len(data.train), "test": len(data.test)}


def test_the_folder_is_hive_partitioned_with_names_readers_skip(hive):
    names = sorted(p.relative_to(hive).as_posix() for p in hive.rglob("*"))
    assert names == ["_generator.onnx", "_manifest.json", "split=test", "split=test/part-0.parquet", "split=train",
                     "split=train/part-0.parquet"]
    man = json.loads((hive / "_manifest.json").read_text())
    assert [f["path"] for f in man["files"]] == ["split=train/part-0.parquet", "split=test/part-0.parquet",
                                                 "_generator.onnx"]
    assert [g["path"] for g in man["generators"]] == ["_generator.onnx"]


def test_pyarrow_reads_the_folder_as_one_table_with_a_split_column(tiny_run, hive):
    want = counts(tiny_run)
    table = pq.read_table(hive)  # failed on manifest.json in the older layout
    assert table.num_rows == sum(want.values())
    assert {"split", "key", "index", "aux_soft"} <= set(table.column_names)
    splits = table.column("split").to_pylist()
    assert {s: splits.count(s) for s in want} == want
    train = pq.read_table(hive, filters=[("split", "=", "train")])
    assert train.num_rows == want["train"]
    assert np.array_equal(np.sort(train.column("index").to_numpy()), np.arange(want["train"]))


def test_pandas_reads_the_folder_as_one_table_with_a_split_column(tiny_run, hive):
    pd = pytest.importorskip("pandas")
    want = counts(tiny_run)
    df = pd.read_parquet(hive)
    assert len(df) == sum(want.values()) and "split" in df.columns
    assert df["split"].astype(str).value_counts().to_dict() == want
    assert len(df["aux_soft"].iloc[0]) == json.loads((hive / "_manifest.json").read_text())["num_aux"]


@pytest.mark.parametrize("layout", ["hive", "old"])
def test_verify_and_read_export_on_both_layouts(tiny_run, layouts, layout):
    folder = layouts[layout]
    export = read_export(folder)
    assert export.kind == "parquet" and not export.problems and set(export.splits) == {"train", "test"}
    report = verify(tiny_run, folder, sample=32)
    assert report.passed, [c.reason for c in report.checks]
    assert "onnx" in next(c.reason for c in report.checks if c.name == "rederivation")  # generator found


@pytest.mark.parametrize("layout", ["hive", "old"])
def test_parquet_reader_on_both_layouts(tiny_run, layouts, layout):
    lt = parquet_reader.LabelTable(str(layouts[layout]))
    assert {s: len(a["index"]) for s, a in lt.splits.items()} == counts(tiny_run)
    batch = next(lt.batches("train", batch_size=16))
    assert batch["aux_soft"].shape == (16, lt.num_aux)


@pytest.mark.parametrize("layout", ["hive", "old"])
def test_report_on_both_layouts(tiny_run, layouts, layout, tmp_path):
    from auxgen.report.builder import build_report

    build_report([tiny_run], tmp_path / "r", labels=layouts[layout], max_samples=50)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["labels"]["source"] == "export"


def test_verify_fails_a_table_the_manifest_does_not_list_in_a_split_folder(tiny_run, hive, tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(hive, folder)
    shutil.copy(folder / "split=test" / "part-0.parquet", folder / "split=test" / "part-1.parquet")
    report = verify(tiny_run, folder, sample=16)
    integrity = next(c for c in report.checks if c.name == "integrity")
    assert integrity.status == "fail" and "part-1.parquet" in integrity.reason


def test_force_replaces_an_old_layout_export_leaving_nothing_of_it(tiny_run, hive, tmp_path):
    folder = to_old_layout(hive, tmp_path / "labels")
    export_labels(tiny_run, folder, "parquet", split="test", force=True)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "_manifest.json", "split=test", "split=test/part-0.parquet"]
    assert verify(tiny_run, folder, sample=16).passed


def test_force_keeps_a_split_folder_holding_someone_elses_file(tiny_run, hive, tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(hive, folder)
    mine = folder / "split=train" / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(AuxgenError, match="notes.txt"):
        export_labels(tiny_run, folder, "parquet", force=True)
    assert mine.read_text() == "mine" and (folder / "_manifest.json").is_file()


def test_a_failed_export_leaves_no_split_folder(tiny_run, tmp_path, monkeypatch):
    from auxgen.export import exporter

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(exporter, "write_manifest", full_disk)
    out = tmp_path / "labels"
    with pytest.raises(AuxgenError, match="No space left"):
        export_labels(tiny_run, out, "parquet")
    assert not out.exists() or not list(out.iterdir()), list(out.rglob("*"))
