"""Issue 16, security: files made by someone else (a generator archive, a manifest, a FIFO) never run code,
never make a reader open a file outside its export, and never hang a reader.

Each crafted archive is checked to be a real exploit first: torch.export.load on it creates a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from _crafted import CRAFTS

from auxgen.checkpoint import sha256_file
from auxgen.errors import AuxgenError
from auxgen.export.generator_files import load_generator, onnx_problem, pt2_problem

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import _common, refresh, wds_stream  # noqa: E402

REAL_EXPLOITS = ("pickled-weight", "sample-inputs", "shape-expression", "opaque-constant")


@pytest.fixture(scope="module")
def export(tiny_run, tmp_path_factory) -> Path:
    """An HDF5 export of the test split with pt2 and onnx generator files, and a shard folder."""
    from auxgen.export import export_labels

    root = tmp_path_factory.mktemp("secure")
    export_labels(tiny_run, root / "l.h5", "hdf5", split="test", generator_formats="pt2,onnx")
    export_labels(tiny_run, root / "shards", "wds", split="test")
    return root


@pytest.fixture(scope="module")
def program(export) -> bytes:
    return (export / "l.h5.generator.pt2").read_bytes()


def copy_h5(export: Path, dest: Path) -> Path:
    for name in ("l.h5", "l.h5.manifest.json", "l.h5.generator.pt2", "l.h5.generator.onnx"):
        shutil.copy(export / name, dest / name)
    return dest / "l.h5"


def reseal(h5: Path, edited: Path) -> None:
    """The manifest's size and hash of `edited`, rewritten as a forger would."""
    mpath = h5.with_name(h5.name + ".manifest.json")
    man = json.loads(mpath.read_text())
    for f in man["files"] + man["generators"]:
        if f["path"] == edited.name:
            f["bytes"], f["sha256"] = edited.stat().st_size, sha256_file(edited)
    mpath.write_text(json.dumps(man))


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail instead of blocking forever (a reader that opens a FIFO waits for a writer)."""
    def expired(*_):
        raise TimeoutError("the reader blocked")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------ crafted .pt2 archives
@pytest.mark.parametrize("craft", REAL_EXPLOITS)
def test_the_crafted_archive_really_runs_code_unguarded(program, tmp_path, craft):
    marker = tmp_path / "pwned"
    data = CRAFTS[craft](program, marker)
    with contextlib.suppress(Exception):
        torch.export.load(io.BytesIO(data)).module()
    assert marker.exists(), "the crafted archive is no exploit: the guard tests below would prove nothing"


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_auxgen_refuses_a_crafted_archive_before_loading(program, tmp_path, craft):
    marker = tmp_path / "pwned"
    path = tmp_path / "generator.pt2"
    path.write_bytes(CRAFTS[craft](program, marker))
    assert pt2_problem(path.read_bytes())
    with pytest.raises(AuxgenError) as e:
        load_generator(path, "pt2")
    assert "refusing to load" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_pipelines_refuse_a_crafted_archive_before_loading(program, tmp_path, craft):
    marker = tmp_path / "pwned"
    path = tmp_path / "generator.pt2"
    path.write_bytes(CRAFTS[craft](program, marker))
    with pytest.raises(_common.ExportError) as e:
        refresh.load_generator(path)
    assert "refusing to load" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_a_genuine_archive_passes_both_guards(program):
    assert pt2_problem(program) is None
    _common.check_pt2("generator.pt2", program)


@pytest.mark.parametrize("craft", ["pickled-weight", "sample-inputs"])
def test_verify_never_runs_a_crafted_generator_even_with_a_forged_manifest(export, tiny_run, tmp_path, cli, craft):
    h5 = copy_h5(export, tmp_path)
    marker = tmp_path / "pwned"
    gen = tmp_path / "l.h5.generator.pt2"
    gen.write_bytes(CRAFTS[craft](gen.read_bytes(), marker))
    reseal(h5, gen)
    code, out, err = cli("verify", tiny_run, "--labels", h5, "--sample", "16")
    assert code == 1 and "Traceback" not in err
    assert not marker.exists()
    from auxgen.verify import verify

    report = verify(tiny_run, h5, sample=16)
    why = next(c for c in report.checks if c.name == "rederivation").reason
    assert "refusing to load" in why and not marker.exists()


def test_a_generator_that_fails_its_hash_is_never_loaded(export, tiny_run, tmp_path, monkeypatch):
    from auxgen.verify import verify

    h5 = copy_h5(export, tmp_path)
    gen = tmp_path / "l.h5.generator.pt2"
    marker = tmp_path / "pwned"
    gen.write_bytes(CRAFTS["pickled-weight"](gen.read_bytes(), marker))  # not resealed
    calls = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append(a))
    report = verify(tiny_run, h5, sample=16)
    checks = {c.name: c for c in report.checks}
    assert checks["integrity"].status == "fail" and "not loaded" in checks["rederivation"].reason
    assert not calls and not marker.exists()


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_manifest_generator_paths_outside_the_export_are_never_loaded(export, tiny_run, tmp_path, where, monkeypatch):
    from auxgen.verify import verify

    (tmp_path / "in").mkdir()
    h5 = copy_h5(export, tmp_path / "in")
    outside = tmp_path / "evil.pt2"
    shutil.copy(export / "l.h5.generator.pt2", outside)
    rel = str(outside) if where == "absolute" else "../evil.pt2"
    mpath = h5.with_name("l.h5.manifest.json")
    man = json.loads(mpath.read_text())
    man["generators"] = [{**g, "path": rel} for g in man["generators"] if g["format"] == "pt2"]
    man["files"] = [f for f in man["files"] if "generator" not in f["path"]] + [
        {"path": rel, "bytes": outside.stat().st_size, "sha256": sha256_file(outside)}]
    mpath.write_text(json.dumps(man))
    (tmp_path / "in" / "l.h5.generator.pt2").unlink()
    (tmp_path / "in" / "l.h5.generator.onnx").unlink()
    calls = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append(a))
    report = verify(tiny_run, h5, sample=16)
    checks = {c.name: c for c in report.checks}
    assert checks["integrity"].status == "fail" and "inside" in checks["integrity"].reason
    assert not calls


def test_onnx_with_external_data_is_refused(export, tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(export / "l.h5.generator.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="../../etc/weights.bin",
                                   size_threshold=0)
    assert "external data" in onnx_problem(model.SerializeToString())
    assert onnx_problem((export / "l.h5.generator.onnx").read_bytes()) is None


# ------------------------------------------------------------------------------ pipelines: manifest paths
@pytest.mark.parametrize("rel", ["../decoy/train-000000.tar", "/tmp/decoy/train-000000.tar",
                                 "a/../../train-000000.tar", "train-000000.tar\x00x"])
def test_wds_stream_never_reads_a_shard_outside_its_folder(export, tmp_path, rel):
    folder = tmp_path / "shards"
    shutil.copytree(export / "shards", folder)
    (tmp_path / "decoy").mkdir()
    shutil.copy(next(folder.glob("test-*.tar")), tmp_path / "decoy" / "train-000000.tar")
    man = json.loads((folder / "manifest.json").read_text())
    man["files"].append({"path": rel, "bytes": 1, "sha256": "0" * 64})
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(_common.ExportError, match="not a file inside the export"):
        wds_stream.shard_urls(folder, "train")


def test_refresh_finds_only_the_listed_generator_with_its_hash(export, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(export / "shards", folder)
    shutil.copy(export / "l.h5.generator.pt2", folder / "generator.pt2")  # at the usual name, unlisted
    assert refresh.find_generator(folder) is None
    man = json.loads((folder / "manifest.json").read_text())
    man["generators"] = [{"path": "generator.pt2", "format": "pt2"}]
    man["files"].append({"path": "generator.pt2", "bytes": 1, "sha256": "0" * 64})
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(_common.ExportError, match="sha256"):
        refresh.find_generator(folder)
    man["files"][-1]["sha256"] = sha256_file(folder / "generator.pt2")
    (folder / "manifest.json").write_text(json.dumps(man))
    assert refresh.find_generator(folder) == folder / "generator.pt2"


# ------------------------------------------------------------------------------ FIFOs never hang a reader
def test_a_fifo_as_labels_is_refused_in_one_line(tiny_run, tmp_path, cli):
    fifo = tmp_path / "labels.h5"
    os.mkfifo(fifo)
    with no_hang():
        code, out, err = cli("verify", tiny_run, "--labels", fifo)
    assert code == 2 and err.strip().startswith("error:") and "not a regular file" in err
    assert len(err.strip().splitlines()) == 1


def test_a_fifo_named_like_a_shard_is_a_problem_not_a_hang(export, tmp_path):
    from auxgen.export.read import read_export

    folder = tmp_path / "shards"
    shutil.copytree(export / "shards", folder)
    os.mkfifo(folder / "test-000099.tar")
    with no_hang():
        found = read_export(folder)
    assert any("test-000099.tar is not a regular file" in p for p in found.problems)


def test_a_fifo_as_manifest_is_a_problem_not_a_hang(export, tmp_path):
    from auxgen.export.read import read_export

    h5 = copy_h5(export, tmp_path)
    h5.with_name("l.h5.manifest.json").unlink()
    os.mkfifo(h5.with_name("l.h5.manifest.json"))
    with no_hang():
        found = read_export(h5)
    assert any("no manifest" in p for p in found.problems)


def test_pipelines_refuse_a_fifo_export(tmp_path):
    from pipelines import numpy_reader

    fifo = tmp_path / "l.h5"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(_common.ExportError, match="not a regular file"):
        numpy_reader.LabelFile(str(fifo))
