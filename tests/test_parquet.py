"""auxgen export --format parquet: the tables read back with pyarrow (and pandas), verify, damage, the pipelines
reader; and the CLI's --checkpoint default (last)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from auxgen.errors import AuxgenError  # noqa: E402
from auxgen.export import compute_soft_labels, export_labels  # noqa: E402
from auxgen.export.options import ExportOptions  # noqa: E402
from auxgen.losses import block_entropy  # noqa: E402
from auxgen.run import load_run, load_run_data  # noqa: E402
from auxgen.verify import verify  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipelines import parquet_reader  # noqa: E402
from pipelines._common import ExportError  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tiny_run):
    run = load_run(tiny_run)
    return run, load_run_data(run)


@pytest.fixture(scope="module")
def pq_export(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parquet") / "labels"
    export_labels(tiny_run, out, "parquet")
    return out


MANIFEST = "_manifest.json"


def table(split: str) -> str:
    """Where a split's table sits in an export's folder (hive layout)."""
    return f"split={split}/part-0.parquet"


def status(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def reason(report, name: str) -> str:
    return next(c.reason for c in report.checks if c.name == name)


def reseal(folder: Path, name: str) -> None:
    """Rewrite the manifest's size and hash of an edited table, as a forger who knows the format would."""
    mpath = folder / MANIFEST
    man = json.loads(mpath.read_text())
    for f in man["files"]:
        if f["path"] == name:
            data = (folder / name).read_bytes()
            f["bytes"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    mpath.write_text(json.dumps(man))


def soft_of(path: Path) -> np.ndarray:
    """A table's aux_soft as a writable [N, K] array."""
    table = pq.read_table(path)
    return np.array(table.column("aux_soft").combine_chunks().flatten()).reshape(table.num_rows, -1)


def rewrite(path: Path, column: str, values: np.ndarray) -> None:
    """Replace a label column of a table (keeping its auxgen metadata), as [N, K] float32 fixed-size lists."""
    table = pq.read_table(path)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np.float32)), values.shape[1])
    i = table.column_names.index(column)
    table = table.set_column(i, column, arr).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, path)


# ------------------------------------------------------------------------------ the tables
def test_parquet_tables_hold_the_exact_labels(pq_export, loaded):
    run, data = loaded
    man = json.loads((pq_export / MANIFEST).read_text())
    assert man["kind"] == "parquet" and man["counts"] == {"train": len(data.train), "test": len(data.test)}
    assert [f["path"] for f in man["files"]] == [table("train"), table("test")]
    for f in man["files"]:
        assert hashlib.sha256((pq_export / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    for split in ("train", "test"):
        sp = getattr(data, split)
        tab = pq.read_table(pq_export / table(split))
        assert tab.column_names == ["key", "index", "primary", "aux_soft", "aux_hard", "entropy"]
        assert tab.schema.field("aux_soft").type == pa.list_(pa.float32(), run.hier.num_aux)
        meta = json.loads(tab.schema.metadata[b"auxgen"])
        assert meta["format"] == "auxgen-labels" and meta["psi"] == list(run.hier.psi) and meta["split"] == split
        assert meta["checkpoint_sha256"] == run.checkpoint_sha256 and meta["count"] == len(sp)
        assert json.loads(meta["run_config"]) == run.meta
        ref = compute_soft_labels(run.generator, sp.images, sp.labels, run.device, 500)
        assert torch.equal(torch.from_numpy(soft_of(pq_export / table(split))), ref)
        assert tab.column("key").to_pylist() == sp.keys
        assert np.array_equal(tab.column("index").to_numpy(), np.arange(len(sp)))
        assert np.array_equal(tab.column("primary").to_numpy(), sp.labels.numpy())
        assert np.array_equal(tab.column("aux_hard").to_numpy(), ref.argmax(1).numpy())
        assert np.array_equal(tab.column("entropy").to_numpy(), block_entropy(ref).numpy())


def test_parquet_reads_with_pandas(pq_export, loaded):
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(pq_export / table("test"))
    assert list(df.columns) == ["key", "index", "primary", "aux_soft", "aux_hard", "entropy"]
    assert len(df) == len(loaded[1].test) and len(df["aux_soft"].iloc[0]) == loaded[0].hier.num_aux


def test_parquet_views_and_generator(tiny_run, loaded, tmp_path):
    out = tmp_path / "v"
    summary = export_labels(tiny_run, out, "parquet", views=2, split="test", generator_formats="pt2")
    assert [f["path"] for f in summary["files"]] == [table("test"), "_generator.pt2"]
    tab = pq.read_table(out / table("test"))
    k = loaded[0].hier.num_aux
    assert tab.schema.field("aux_soft").type == pa.list_(pa.list_(pa.float32(), k), 2)
    assert tab.schema.field("views").type == pa.list_(pa.list_(pa.int32(), 3), 2)
    report = verify(tiny_run, out, sample=64)
    assert report.passed, [c.reason for c in report.checks]
    assert "pt2" in reason(report, "rederivation")


def test_parquet_export_verifies(tiny_run, pq_export):
    report = verify(tiny_run, pq_export, sample=64)
    assert status(report) == {"evaluation": "pass", "integrity": "pass", "rederivation": "pass"}
    assert "2 file(s) match the manifest" in reason(report, "integrity")


@pytest.mark.parametrize("damage", ["truncated", "wrong_k", "nan", "unlisted"])
def test_damaged_parquet_fails_verify_in_one_line(tiny_run, pq_export, tmp_path, damage):
    out = tmp_path / "labels"
    shutil.copytree(pq_export, out)
    path = out / table("test")
    soft = soft_of(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "wrong_k":
        rewrite(path, "aux_soft", soft[:, :-1])
        reseal(out, table("test"))
    elif damage == "nan":
        soft[3, :] = np.nan
        rewrite(path, "aux_soft", soft)
        reseal(out, table("test"))
    else:  # a table beside the export that the manifest does not list
        (out / table("train")).rename(out / "split=train" / "extra.parquet")
    report = verify(tiny_run, out, sample=64)
    assert status(report)["integrity"] == "fail"
    why = reason(report, "integrity")
    assert "\n" not in why
    expected = {"truncated": "cannot be read as parquet", "wrong_k": "aux_soft has shape",
                "nan": "NaN", "unlisted": "extra.parquet"}[damage]
    assert expected in why, why


def test_parquet_usage_errors_are_one_line_and_keep_the_export(tiny_run, pq_export, tmp_path):
    with pytest.raises(AuxgenError, match="wds only.*--force"):
        export_labels(tiny_run, tmp_path / "r", "parquet", resume=True)
    with pytest.raises(AuxgenError, match="float32"):
        export_labels(tiny_run, tmp_path / "h", "parquet", dtype="float16")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuxgenError, match="is a file"):
        export_labels(tiny_run, tmp_path / "file", "parquet")
    out = tmp_path / "labels"
    shutil.copytree(pq_export, out)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(AuxgenError, match="already holds an export"):
        export_labels(tiny_run, out, "parquet")
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --force replaces it whole: a split not exported again does not stay behind
    export_labels(tiny_run, out, "parquet", split="train", force=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [MANIFEST, "split=train", table("train")]
    assert verify(tiny_run, out, sample=16).passed
    # one format replaced by the other in one folder: nothing of the old one stays behind
    export_labels(tiny_run, out, "wds", images=False, split="test", force=True)
    assert not list(out.rglob("*.parquet")) and not list(out.glob("split=*")) and list(out.glob("test-*.tar"))
    export_labels(tiny_run, out, "parquet", split="test", force=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [MANIFEST, "split=test", table("test")]
    assert verify(tiny_run, out, sample=16).passed


def test_parquet_without_pyarrow_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(AuxgenError, match="needs pyarrow"):
        ExportOptions(fmt="parquet").validated()


# ------------------------------------------------------------------------------ pipelines
def test_pipelines_parquet_reader(pq_export, loaded, tmp_path):
    run, data = loaded
    lt = parquet_reader.LabelTable(str(pq_export))
    assert lt.psi == list(run.hier.psi) and set(lt.splits) == {"train", "test"}
    assert list(lt.splits["test"]["keys"]) == data.test.keys
    batches = list(lt.batches("train", batch_size=100, shuffle=True, seed=1))
    assert sum(len(b["index"]) for b in batches) == len(data.train)
    assert batches[0]["aux_soft"].shape == (100, run.hier.num_aux)
    # damage: a changed table (hash), a resealed NaN (the label rules), another kind of export
    out = tmp_path / "labels"
    shutil.copytree(pq_export, out)
    path = out / table("train")
    soft = soft_of(path)
    soft[0, 0] = np.nan
    rewrite(path, "aux_soft", soft)
    with pytest.raises(ExportError, match="sha256"):
        parquet_reader.LabelTable(str(out))
    reseal(out, table("train"))
    with pytest.raises(ExportError, match="NaN"):
        parquet_reader.LabelTable(str(out))
    man = json.loads((out / MANIFEST).read_text())
    man["files"][0]["path"] = "../outside.parquet"
    (out / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ExportError, match="not a file inside the export"):
        parquet_reader.LabelTable(str(out))


# ------------------------------------------------------------------------------ the --checkpoint default
def test_cli_export_verify_default_to_the_last_checkpoint(tiny_run, tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    out = tmp_path / "labels"
    code, _, err = run_cli(["export", tiny_run, "--format", "parquet", "--out", out, "--quiet"], capsys, monkeypatch)
    assert code == 0, err
    man = json.loads((out / MANIFEST).read_text())
    last = load_run(tiny_run, "last")
    assert man["checkpoint"] == "last" and man["checkpoint_sha256"] == last.checkpoint_sha256
    code, _, err = run_cli(["verify", tiny_run, "--labels", out], capsys, monkeypatch)
    assert code == 0, err
    code, _, _ = run_cli(["export", "--help"], capsys, monkeypatch)
    assert code == 0
