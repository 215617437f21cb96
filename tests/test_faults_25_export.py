"""Issue 25, export side and the Python API: each finding of the third probe on them, as a test.

A failed or interrupted HDF5 export leaves nothing of itself; --force replaces only an earlier auxgen
export; an export never writes over any input the run's config names; k-means targets are checked
at export; the Python API answers bad arguments and damaged runs in one line.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

import auxgen
from auxgen.errors import AuxgenError
from auxgen.export import export_labels


def run_cli(*args: str) -> tuple[int, list[str]]:
    """auxgen's console entry point in this process: (exit code, stderr lines)."""
    from auxgen import cli

    old, real = sys.argv, sys.stderr
    sys.argv, sys.stderr = ["auxgen", *map(str, args)], io.StringIO()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        err = sys.stderr.getvalue().strip().splitlines()
        sys.argv, sys.stderr = old, real
    return code, err


def one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert isinstance(e.value, AuxgenError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the tiny run."""
    dest = tmp_path_factory.mktemp("f25") / "run"
    shutil.copytree(tiny_run, dest)
    return dest


# ------------------------------------------------------------------------------ k-means targets (item 5)
@pytest.fixture(scope="module")
def kmeans_run(tmp_path_factory) -> Path:
    from auxgen.trainer import train

    out = tmp_path_factory.mktemp("f25km") / "km"
    train(tiny_config(method="kmeans", epochs=1), out, show=False)
    return out


def _kmeans_copy(kmeans_run: Path, dest: Path) -> tuple[Path, np.ndarray]:
    shutil.copytree(kmeans_run, dest)
    return dest, np.load(dest / "targets.npy")


def test_kmeans_targets_outside_their_block_are_refused_at_export(kmeans_run, tmp_path):
    from auxgen.run import load_run

    run, good = _kmeans_copy(kmeans_run, tmp_path / "run")
    psi = load_run(run).hier.psi
    moved = (good + psi[0]) % sum(psi)  # in range [0, K), but in the next class's block
    np.save(run / "targets.npy", moved)
    with pytest.raises(AuxgenError) as e:
        export_labels(run, tmp_path / "x.h5", split="train")
    one_line(e, "outside their primary class's block")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("content", ["npz", "text", "empty"])
def test_kmeans_targets_that_are_not_an_npy_array_are_one_line(kmeans_run, tmp_path, content):
    run, good = _kmeans_copy(kmeans_run, tmp_path / "run")
    target = run / "targets.npy"
    if content == "npz":
        with open(target, "wb") as f:
            np.savez(f, targets=good)
    elif content == "text":
        target.write_text("0,1,2\n")
    else:
        target.write_bytes(b"")
    with pytest.raises(AuxgenError) as e:
        export_labels(run, tmp_path / "x.h5", split="train")
    one_line(e, "targets.npy")
    assert not (tmp_path / "x.h5").exists()


# ------------------------------------------------------------------------------ a failed HDF5 export (items 1, 2)
def _generator_fails_with(monkeypatch, exc: BaseException) -> None:
    import auxgen.export.exporter as exporter

    def failing(*a, **kw):
        raise exc

    monkeypatch.setattr(exporter, "save_generator", failing)


def test_full_disk_writing_the_generator_leaves_nothing_of_the_export(run, tmp_path, monkeypatch):
    _generator_fails_with(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(AuxgenError) as e:
        export_labels(run, tmp_path / "labels.h5", split="test", generator_formats="pt2")
    one_line(e, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # no labels.h5, no manifest, no temporary file


def test_full_disk_writing_the_generator_keeps_the_earlier_export_whole(run, tmp_path, monkeypatch):
    out = tmp_path / "labels.h5"
    export_labels(run, out, split="test", generator_formats="torchscript")
    before = tree(tmp_path)
    _generator_fails_with(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(AuxgenError, match="No space left"):
        export_labels(run, out, split="test", generator_formats="torchscript", force=True)
    assert tree(tmp_path) == before


def test_full_disk_writing_the_manifest_unpublishes_the_file(run, tmp_path, monkeypatch):
    import auxgen.export.manifest as manifest

    def no_space(path, data, mode=0o600):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(manifest, "write_json_atomic", no_space)
    with pytest.raises(AuxgenError, match="No space left"):
        export_labels(run, tmp_path / "labels.h5", split="test", generator_formats="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_writing_generator_files_publishes_nothing_and_a_rerun_works(run, tmp_path, monkeypatch):
    from auxgen.cli import Terminated

    out = tmp_path / "o.h5"
    args = ("export", run, "--out", out, "--split", "test", "--generator-format", "torchscript", "--quiet")
    _generator_fails_with(monkeypatch, Terminated())
    code, err = run_cli(*args)
    assert code == 143 and "nothing was published at --out" in " ".join(err), err
    assert list(tmp_path.iterdir()) == []  # the message is true: no o.h5, no manifest, no temporary file
    monkeypatch.undo()
    code, err = run_cli(*args)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5", "o.h5.generator.pt", "o.h5.manifest.json"]


# ------------------------------------------------------------------------------ --force replaces only an export (3)
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("what", ["thesis", "fifo", "foreign-hdf5", "foreign-generator", "foreign-manifest"])
def test_force_replaces_only_an_earlier_auxgen_export(run, tmp_path, what):
    import h5py

    out = tmp_path / ("thesis.tex" if what == "thesis" else "o.h5")
    if what == "thesis":
        out.write_text("\\documentclass{article}\n")
    elif what == "fifo":
        _fifo(out)
    elif what == "foreign-hdf5":
        with h5py.File(out, "w") as f:
            f["x"] = np.arange(3)
    elif what == "foreign-generator":
        export_labels(run, out, split="test")
        out.with_name("o.h5.generator.pt2").write_bytes(b"PK\x03\x04 my own model")
    else:
        export_labels(run, out, split="test")
        out.with_name("o.h5.manifest.json").write_text(json.dumps({"format": "mine", "kind": "hdf5"}))
    before = {p.name: (p.stat().st_mode, p.read_bytes() if p.is_file() else None) for p in tmp_path.iterdir()}
    code, err = run_cli("export", run, "--out", out, "--split", "test", "--force", "--quiet")
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and "--force replaces only" in err[0], err
    assert {p.name: (p.stat().st_mode, p.read_bytes() if p.is_file() else None) for p in tmp_path.iterdir()} == before


def test_force_still_replaces_an_earlier_export(run, tmp_path):
    out = tmp_path / "o.h5"
    export_labels(run, out, split="test", generator_formats="torchscript")
    export_labels(run, out, split="train", force=True)  # the earlier generator file goes with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5", "o.h5.manifest.json"]
    folder = tmp_path / "shards"
    export_labels(run, folder, fmt="wds", split="test", images=False)
    export_labels(run, folder, fmt="wds", split="test", images=False, force=True)
    assert (folder / "manifest.json").is_file()


@pytest.mark.parametrize("what", ["fifo-shard", "foreign-manifest", "no-manifest"])
def test_force_replaces_only_an_export_folder(run, tmp_path, what):
    folder = tmp_path / "s"
    folder.mkdir()
    if what == "fifo-shard":
        export_labels(run, folder, fmt="wds", split="test", images=False)
        (folder / "test-000000.tar").unlink()
        _fifo(folder / "test-000000.tar")
    elif what == "foreign-manifest":
        (folder / "manifest.json").write_text("{}")
        (folder / "train.parquet").write_bytes(b"my table")
    else:
        (folder / "train.parquet").write_bytes(b"my table")
    names = sorted(p.name for p in folder.iterdir())
    with pytest.raises(AuxgenError) as e:
        export_labels(run, folder, fmt="wds", split="test", images=False, force=True)
    one_line(e, "--force replaces only")
    assert sorted(p.name for p in folder.iterdir()) == names


# ------------------------------------------------------------------------------ never over the inputs (item 4)
@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch run on a csv dataset (d/list.csv, images in d/img) with --psi-file d/../psi.json."""
    from test_inputs import write_csv

    from auxgen.trainer import train

    root = tmp_path_factory.mktemp("f25csv")
    listed = write_csv(root / "d")
    (root / "psi.json").write_text("[2, 3]")
    train(tiny_config(dataset="csv", data_root=str(listed), psi_file=str(root / "psi.json"), image_size=8,
                      width=4, epochs=1, batch_size=4), root / "run", show=False)
    return root / "run", root


@pytest.mark.parametrize("target, what", [("d/img/cat1.png", "an image of the dataset"),
                                          ("d/list.csv", "the dataset"), ("psi.json", "the --psi-file")])
def test_export_never_writes_over_an_input_the_config_names(csv_run, target, what):
    run, root = csv_run
    before = tree(root / "d") | {"psi.json": (root / "psi.json").read_bytes()}
    code, err = run_cli("export", run, "--out", root / target, "--force", "--quiet")
    assert code != 0 and len(err) == 1 and what in err[0] and "never writes over its own inputs" in err[0], err
    assert tree(root / "d") | {"psi.json": (root / "psi.json").read_bytes()} == before
    export_labels(run, root / "labels.h5", force=True)  # the run still loads and exports


# ------------------------------------------------------------------------------ the Python API (item 6)
def test_api_export_takes_a_str_path(run, tmp_path):
    summary = auxgen.export(run, str(tmp_path / "labels.h5"), split="test")
    assert Path(summary["manifest"]).is_file() and (tmp_path / "labels.h5").is_file()


@pytest.mark.parametrize("kw, name", [({"views": "3"}, "views"), ({"split": 3}, "split"), ({"force": "yes"}, "force"),
                                      ({"batch_size": 2.5}, "batch_size"), ({"format": None}, "format"),
                                      ({"generator_formats": 5}, "generator_formats"), ({"views": True}, "views")])
def test_api_export_with_wrongly_typed_options_is_one_line(run, tmp_path, kw, name):
    with pytest.raises(AuxgenError) as e:
        auxgen.export(run, tmp_path / "labels.h5", **kw)
    one_line(e, f"export option {name} must be")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", [None, 5, ""])
def test_api_export_out_that_is_not_a_path_is_one_line(run, out):
    with pytest.raises(AuxgenError) as e:
        auxgen.export(run, out)
    one_line(e, "out must be a file or folder path")


def test_api_label_with_a_module_that_is_not_a_generator_is_one_line():
    import torch

    with pytest.raises(AuxgenError) as e:
        auxgen.label(torch.nn.Linear(3, 4), torch.zeros(2, 1, 8, 8, dtype=torch.uint8), [0, 1])
    one_line(e, "Linear", "label generator")


@pytest.mark.parametrize("name, content", [("summary.json", "{not json"), ("summary.json", "[1, 2]"),
                                           ("summary.json", b"\xff\xfe"), ("metrics.jsonl", '{"epoch": 1}\n{trunc'),
                                           ("metrics.jsonl", "3\n")])
def test_open_run_on_damaged_summary_or_metrics_is_one_line(run, tmp_path, name, content):
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    f = damaged / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(AuxgenError) as e:
        auxgen.open_run(damaged).metrics  # noqa: B018 (reading it is the test)
    one_line(e, name)


@pytest.mark.parametrize("epochs", ["3", 0, 2.0, True])
def test_resume_blames_the_epochs_argument_not_the_config(run, epochs):
    with pytest.raises(AuxgenError) as e:
        auxgen.resume(run, epochs=epochs)
    one_line(e, "epochs must be")
    assert "config.json" not in str(e.value)


def test_a_views_count_beyond_memory_is_refused_before_allocating(run, tmp_path):
    with pytest.raises(AuxgenError) as e:
        export_labels(run, tmp_path / "v.h5", views=10**9)
    one_line(e, "--views 1000000000", "of memory", "use at most")
    assert list(tmp_path.iterdir()) == []
    code, err = run_cli("export", run, "--out", tmp_path / "v.h5", "--views", str(10**9), "--quiet")
    assert code != 0 and len(err) == 1 and "--views" in err[0], err
