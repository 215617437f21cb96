"""Fault campaign on export and verify: every finding of it, as a test.

Outputs over inputs, colliding keys, kill -9 at each stage of a shard export (then --resume,
compared byte for byte with an uninterrupted export), a full disk, permissions, and damaged or
foreign files in every input slot (checkpoint, config.json, resume state, manifest, shards,
HDF5, --labels). Each user-facing failure must be one line and leave nothing half written.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_config, write_imagefolder

from auxgen.errors import AuxgenError
from auxgen.export import export_labels, key_of_wds, read_export, wds_key
from auxgen.export.format import EXPORT_FILE_MODE, STATE_NAME
from auxgen.verify import verify

ROOT = Path(__file__).resolve().parents[1]
WDS = dict(fmt="wds", images=False, max_count=150)  # 1438 train samples: 10 shards, 359 test: 3


def run_cli(*args: str) -> tuple[int, list[str]]:
    """auxgen's console entry point in a subprocess-free way: (exit code, stderr lines)."""
    from auxgen import cli

    old = sys.argv
    sys.argv = ["auxgen", *args]
    buf, real = io.StringIO(), sys.stderr
    sys.stderr = buf
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv, sys.stderr = old, real
        err = buf.getvalue().strip().splitlines()
    return code, err


def one_line_error(code: int, err: list[str], *needles: str) -> None:
    assert code != 0, err
    assert len(err) == 1 and err[0].startswith("error:"), err
    for n in needles:
        assert n in err[0], err


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (or root itself) with its bytes: to prove nothing changed."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


def same_shards(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.tar"))
    assert names and names == sorted(p.name for p in b.glob("*.tar"))
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["files"] == mb["files"] and ma["counts"] == mb["counts"]


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the tiny run (tests here damage copies of it, never tiny_run)."""
    dest = tmp_path_factory.mktemp("faults") / "run"
    shutil.copytree(tiny_run, dest)
    return dest


@pytest.fixture(scope="module")
def full(run, tmp_path_factory) -> Path:
    """An uninterrupted shard export to compare interrupted ones with."""
    out = tmp_path_factory.mktemp("full") / "shards"
    export_labels(run, out, **WDS)
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ------------------------------------------------------------------------------ outputs over inputs
@pytest.mark.parametrize("target, fmt", [("config.json", "hdf5"), ("checkpoints/last.pt", "hdf5"),
                                         ("checkpoints/best.pt", "hdf5"), ("labels.h5", "hdf5"),
                                         ("shards", "wds"), (".", "wds"), ("..", "wds")])
def test_out_never_writes_over_the_run(run, target, fmt):
    before = tree(run)
    out = (run / target) if target != ".." else run.parent
    code, err = run_cli("export", str(run), "--format", fmt, "--out", str(out), "--force", "--quiet")
    one_line_error(code, err, "--out")
    assert tree(run) == before
    assert not (run / "labels.h5").exists() and not (run / "shards").exists()


def test_out_through_a_symlink_or_onto_a_foreign_checkpoint(run, tmp_path):
    link = tmp_path / "innocent.h5"
    link.symlink_to(run / "config.json")
    before = tree(run)
    with pytest.raises(AuxgenError, match="the run directory"):
        export_labels(run, link, force=True)
    ck = tmp_path / "ck.pt"
    shutil.copy(run / "checkpoints" / "best.pt", ck)
    with pytest.raises(AuxgenError, match="the checkpoint"):
        export_labels(run, ck, checkpoint=str(ck), force=True)
    assert tree(run) == before and ck.read_bytes() == (run / "checkpoints" / "best.pt").read_bytes()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch ImageFolder run whose class `cat` holds a.b.png and a_b.png (version 1 keys collided)."""
    from PIL import Image

    from auxgen.trainer import train

    root = tmp_path_factory.mktemp("imagefolder")
    data = write_imagefolder(root / "data", classes=("cat", "dog"), per_class=6, size=12)
    rng = np.random.default_rng(1)
    for name in ("a.b.png", "a_b.png", "100%.png"):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(data / "cat" / name)
    out = root / "run"
    train(tiny_config(dataset="imagefolder", data_root=str(data), image_size=8, width=4, epochs=1,
                      batch_size=4), out, show=False)
    return out, data


def test_out_never_writes_into_the_dataset(folder_run):
    run, data = folder_run
    before = tree(data)
    for out, fmt in ((data / "labels.h5", "hdf5"), (data / "cat" / "a_b.png", "hdf5"), (data, "wds"),
                     (data.parent, "wds")):
        with pytest.raises(AuxgenError, match="--out"):
            export_labels(run, out, fmt=fmt, force=True)
    assert tree(data) == before


# ------------------------------------------------------------------------------ keys
def test_dotted_and_underscored_names_get_distinct_reversible_keys(folder_run, tmp_path):
    import webdataset as wds

    run, _ = folder_run
    out = tmp_path / "shards"
    export_labels(run, out, fmt="wds")
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False).decode())
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == sum(read_export(out).manifest["counts"].values())
    for s in samples:
        assert key_of_wds(s["__key__"]) == s["json"]["key"] and s["__key__"] == wds_key(s["json"]["key"])
    stored = {s["json"]["key"] for s in samples}
    assert {"cat/a.b.png", "cat/a_b.png", "cat/100%.png"} <= stored
    assert wds_key("cat/a.b.png") != wds_key("cat/a_b.png") and wds_key("cat/100%.png") == "cat/100%25%2Epng"
    assert wds_key("cat/a.b.png", version=1) == wds_key("cat/a_b.png", version=1)  # the old collision
    report = verify(run, out, sample=64)
    assert report.passed, report.to_dict()


@pytest.mark.parametrize("keys, match", [(["dup/1", "dup/1"], "both be stored under"),
                                         (["__meta__/x", "ok/1"], "readers give back")])
def test_keys_that_cannot_be_stored_are_refused_before_writing(run, tmp_path, monkeypatch, keys, match):
    import auxgen.export.exporter as ex

    real = ex.load_run_data

    def renamed(r, check=True):
        d = real(r, check)
        d.test.keys = keys + d.test.keys[len(keys):]
        return d

    monkeypatch.setattr(ex, "load_run_data", renamed)
    out = tmp_path / "o"
    with pytest.raises(AuxgenError, match=match):
        export_labels(run, out, fmt="wds", split="test")
    assert not out.exists()


# ------------------------------------------------------------------------------ file system failures
def test_out_under_a_file_is_one_line(run, tmp_path):
    (tmp_path / "plain").write_text("x")
    for fmt, out in (("hdf5", tmp_path / "plain" / "l.h5"), ("wds", tmp_path / "plain" / "deeper" / "s")):
        code, err = run_cli("export", str(run), "--format", fmt, "--out", str(out), "--quiet")
        one_line_error(code, err, "is a file")
    assert (tmp_path / "plain").read_text() == "x"


def _deny(monkeypatch, where: str) -> None:
    """Make creating files fail with EACCES, as in a read-only folder (the tests may run as root)."""
    real_open = open

    def mkstemp(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", kw.get("dir", where))

    def opener(file, mode="r", *a, **kw):
        if "w" in mode and str(file).startswith(where):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr("builtins.open", opener)


@pytest.mark.parametrize("fmt", ["hdf5", "wds"])
def test_read_only_out_is_one_line(run, tmp_path, monkeypatch, fmt):
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny(monkeypatch, str(ro))
    out = ro / ("l.h5" if fmt == "hdf5" else "s")
    with pytest.raises(AuxgenError, match="Permission denied") as e:
        export_labels(run, out, fmt=fmt, split="test")
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert [p for p in ro.rglob("*") if p.is_file()] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(run, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = run_cli("export", str(run), "--out", str(ro / "l.h5"), "--quiet")
        one_line_error(code, err)
    finally:
        ro.chmod(0o755)


def _full_disk_after(monkeypatch, cls, method: str, calls: int) -> None:
    real = getattr(cls, method)
    seen = [0]

    def failing(self, *a, **kw):
        seen[0] += 1
        if seen[0] > calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, method, failing)


def test_full_disk_mid_shard_keeps_finished_shards_and_resumes_identically(run, full, tmp_path, monkeypatch):
    from auxgen.export.wds import _HashingFile

    out = tmp_path / "s"
    _full_disk_after(monkeypatch, _HashingFile, "write", 200)  # a few shards in
    with pytest.raises(AuxgenError) as e:
        export_labels(run, out, **WDS)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "--resume" in msg
    monkeypatch.undo()
    assert not list(out.glob(".*.tmp")) and not (out / "manifest.json").exists()
    assert (out / STATE_NAME).is_file() and list(out.glob("*.tar"))
    summary = export_labels(run, out, **WDS, resume=True)
    assert summary["resumed"]
    same_shards(out, full)


def test_full_disk_in_hdf5_leaves_the_old_export_intact(run, tmp_path, monkeypatch):
    from auxgen.export.hdf5 import Hdf5Sink

    out = tmp_path / "l.h5"
    export_labels(run, out, split="test")
    before = tree(tmp_path)
    _full_disk_after(monkeypatch, Hdf5Sink, "write", 0)
    with pytest.raises(AuxgenError, match="No space left on device") as e:
        export_labels(run, out, split="test", force=True)
    assert "\n" not in str(e.value)
    assert tree(tmp_path) == before  # old file and manifest as they were, no temporary file left


def test_full_disk_writing_the_manifest(run, full, tmp_path, monkeypatch):
    import auxgen.export.manifest as manifest

    def no_space(path, data, mode=0o600):
        raise AuxgenError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(manifest, "write_json_atomic", no_space)
    out = tmp_path / "s"
    with pytest.raises(AuxgenError, match="No space"):
        export_labels(run, out, **WDS)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / STATE_NAME).is_file()
    assert export_labels(run, out, **WDS, resume=True)["samples_computed"] == 0
    same_shards(out, full)


def test_full_disk_writing_the_generator(run, tmp_path, monkeypatch):
    def no_space(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nmore")

    monkeypatch.setattr(torch.jit, "save", no_space)
    with pytest.raises(AuxgenError, match="cannot write .*generator.pt") as e:
        export_labels(run, tmp_path / "l.h5", split="test", generator_formats="torchscript")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "l.h5.manifest.json").exists() and not list(tmp_path.glob(".*.tmp"))


def test_export_files_are_0644_whatever_the_umask(run, tmp_path):
    old = os.umask(0o077)
    try:
        export_labels(run, tmp_path / "l.h5", split="test", generator_formats="pt2,onnx,torchscript")
        export_labels(run, tmp_path / "s", fmt="wds", split="test", images=False)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(EXPORT_FILE_MODE)}


# ------------------------------------------------------------------------------ kill -9
_KILLER = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import auxgen.export.exporter as ex
import auxgen.export.hdf5 as h5
import auxgen.export.wds as w
point, n = sys.argv[1], int(sys.argv[2])
seen = [0]
def kill_on_nth(real):
    def wrapped(*a, **kw):
        seen[0] += 1
        if seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    return wrapped
if point == "mid_shard":          # bytes of a shard on disk, the shard unfinished
    w._HashingFile.write = kill_on_nth(w._HashingFile.write)
elif point == "after_rename":     # a shard renamed into place but not yet recorded
    w.WdsSink._record = kill_on_nth(w.WdsSink._record)
elif point == "before_manifest":  # every shard recorded, no manifest
    ex.write_manifest = kill_on_nth(ex.write_manifest)
elif point == "after_manifest":   # the manifest written, the resume state not yet removed
    real = ex.write_manifest
    def after(*a, **kw):
        real(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    ex.write_manifest = after
elif point == "hdf5_mid":         # an HDF5 export in the middle of its temporary file
    h5.Hdf5Sink.write = kill_on_nth(h5.Hdf5Sink.write)
opts = dict(fmt="hdf5") if point.startswith("hdf5") else dict(fmt="wds", images=False, max_count=150)
ex.export_labels(sys.argv[3], sys.argv[4], **opts)
"""


def _killed(run: Path, out: Path, point: str, n: int) -> None:
    code = _KILLER.format(tests=str(ROOT / "tests"))
    r = subprocess.run([sys.executable, "-c", code, point, str(n), str(run), str(out)], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


@pytest.mark.parametrize("point, n", [("mid_shard", 300), ("after_rename", 4), ("before_manifest", 1),
                                      ("after_manifest", 1)])
def test_kill_9_then_resume_gives_the_same_shards(run, full, tmp_path, point, n):
    out = tmp_path / "s"
    _killed(run, out, point, n)
    if point == "after_manifest":
        assert (out / "manifest.json").is_file() and (out / STATE_NAME).is_file()
    else:
        assert not (out / "manifest.json").exists()
    with pytest.raises(AuxgenError, match="--resume"):  # a plain re-run says how to continue
        export_labels(run, out, **WDS)
    summary = export_labels(run, out, **WDS, resume=True)
    assert not list(out.glob(".*.tmp")) and not (out / STATE_NAME).exists()
    same_shards(out, full)
    if point in ("before_manifest", "after_manifest"):
        assert summary["samples_computed"] == 0
    assert verify(run, out, sample=32).passed


def test_kill_9_of_an_hdf5_export_leaves_nothing_that_looks_finished(run, tmp_path):
    out = tmp_path / "l.h5"
    _killed(run, out, "hdf5_mid", 2)
    assert not out.exists() and not (tmp_path / "l.h5.manifest.json").exists()
    assert len(list(tmp_path.glob(".l.h5.*.tmp"))) == 1
    export_labels(run, out)  # no --force needed: nothing was exported; the stale temporary file goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.h5", "l.h5.manifest.json"]
    ref = tmp_path / "ref.h5"
    export_labels(run, ref)
    with h5py.File(out) as a, h5py.File(ref) as b:
        for s in ("train", "test"):
            for d in ("aux_soft", "aux_hard", "entropy", "keys"):
                assert np.array_equal(a[s][d][()], b[s][d][()])


# ------------------------------------------------------------------------------ damaged or foreign inputs
def _damage_checkpoint(ck: Path, how: str) -> None:
    if how == "truncated":
        ck.write_bytes(ck.read_bytes()[:2000])
    elif how == "random":
        ck.write_bytes(np.random.default_rng(0).bytes(5000))
    elif how == "json":
        ck.write_text(json.dumps({"model": 1}))
    elif how == "empty":
        ck.write_bytes(b"")
    elif how == "other_width":
        from auxgen.trainer import train

        s = train(tiny_config(width=4, epochs=1), ck.parent.parent.parent / "w4", show=False)
        del s
        state = torch.load(ck.parent.parent.parent / "w4" / "checkpoints" / "best.pt", weights_only=True)
        torch.save(state, ck)
    elif how == "no_generator":
        state = torch.load(ck, weights_only=True)
        state.pop("generator", None)
        torch.save(state, ck)


@pytest.mark.parametrize("how", ["truncated", "random", "json", "empty", "other_width", "no_generator"])
def test_damaged_checkpoint_is_one_line_for_export_and_a_failure_for_verify(run, tmp_path, how):
    r = copy_run(run, tmp_path / "run")
    _damage_checkpoint(r / "checkpoints" / "best.pt", how)
    # the CLI's default is the last checkpoint: name the damaged one
    code, err = run_cli("export", str(r), "--out", str(tmp_path / "l.h5"), "--quiet", "--checkpoint", "best")
    one_line_error(code, err)
    assert not (tmp_path / "l.h5").exists()
    code, err = run_cli("verify", str(r), "--checkpoint", "best")
    assert code == 1 and len(err) == 1, err


@pytest.mark.parametrize("content", [b"{not json", b"", b"[]", b"{}", b'{"train": 5}', b'{"name": "left-pad"}',
                                     b"\xff\xfe\x00garbage", b'{"train": {}, "psi": [5, 5], "data": []}'])
def test_damaged_or_foreign_config_is_one_line(run, tmp_path, content):
    r = copy_run(run, tmp_path / "run")
    (r / "config.json").write_bytes(content)
    for args in (["export", str(r), "--out", str(tmp_path / "l.h5")], ["verify", str(r)]):
        code, err = run_cli(*args, *(["--quiet"] if args[0] == "export" else []))
        one_line_error(code, err)
    assert not (tmp_path / "l.h5").exists()


@pytest.mark.parametrize("state", ["not json", "[]", '{"params": {}, "shards": {"train": "x"}}',
                                   '{"params": {}, "shards": {"train": [{"path": "../../etc/passwd", "count": 1, '
                                   '"bytes": 1, "sha256": "0", "stats": {}}]}}'])
def test_damaged_resume_state_is_one_line(run, tmp_path, state):
    out = tmp_path / "s"
    out.mkdir()
    (out / STATE_NAME).write_text(state)
    with pytest.raises(AuxgenError, match="damaged") as e:
        export_labels(run, out, **WDS, resume=True)
    assert "\n" not in str(e.value)


def test_foreign_and_damaged_shards_are_rewritten_on_resume(run, full, tmp_path, monkeypatch):
    import auxgen.export.wds as wds_mod

    calls = []

    def interrupt(record):
        calls.append(record["path"])
        if len(calls) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(wds_mod, "_shard_written", interrupt)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        export_labels(run, out, **WDS)
    monkeypatch.undo()
    (out / calls[0]).write_bytes(b"")                     # emptied
    shutil.copy(full / "test-000000.tar", out / calls[2])  # a valid tar of another split in its place
    (out / "train-000009.tar").write_bytes(b"stray")      # a shard the state never recorded
    export_labels(run, out, **WDS, resume=True)
    same_shards(out, full)


# ------------------------------------------------------------------------------ verify on damaged exports
@pytest.fixture(scope="module")
def exports(run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exports")
    export_labels(run, root / "l.h5", split="test")
    export_labels(run, root / "s", fmt="wds", split="test", max_count=100)
    return root


def _copy(exports: Path, name: str, dest: Path) -> Path:
    src = exports / name
    if src.is_dir():
        shutil.copytree(src, dest / name)
    else:
        for p in exports.glob(name + "*"):
            shutil.copy(p, dest / p.name)
    return dest / name


def integrity(run: Path, labels: Path) -> tuple[str, str]:
    report = verify(run, labels, sample=16)
    c = next(c for c in report.checks if c.name == "integrity")
    assert "\n" not in c.reason
    return c.status, c.reason


@pytest.mark.parametrize("manifest, match", [
    ("[]", "not a JSON object"), ('{"format": "auxgen-labels"}', "lists no files"),
    ('{"files": "all of them"}', "lists no files"), ('{"files": [1, null]}', "does not name a file"),
    ('{"files": [{"path": "../../../../etc/passwd", "bytes": 1, "sha256": "x"}]}', "does not name a file"),
    ("\xff not text", "not a JSON object")])
def test_foreign_manifest_fails_integrity(run, exports, tmp_path, manifest, match):
    s = _copy(exports, "s", tmp_path)
    (s / "manifest.json").write_bytes(manifest.encode("utf-8", "surrogateescape") if "\xff" not in manifest
                                      else b"\xff not text")
    status, reason = integrity(run, s)
    assert status == "fail" and match in reason


@pytest.mark.parametrize("damage", ["not_tar", "empty", "truncated", "extra_member", "duplicate_member",
                                    "gzipped", "no_json"])
def test_damaged_shard_fails_integrity_without_a_traceback(run, exports, tmp_path, damage):
    s = _copy(exports, "s", tmp_path)
    tar = s / "test-000001.tar"
    raw = tar.read_bytes()
    if damage == "not_tar":
        tar.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    elif damage == "empty":
        tar.write_bytes(b"")
    elif damage == "truncated":
        tar.write_bytes(raw[: len(raw) // 3])
    elif damage in ("extra_member", "duplicate_member", "no_json"):
        with tarfile.open(tar) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
        with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
            for i, (m, data) in enumerate(members):
                if damage == "no_json" and i == 2 and m.name.endswith(".json"):
                    continue
                t.addfile(m, io.BytesIO(data))
                if damage == "duplicate_member" and i == 0:
                    t.addfile(m, io.BytesIO(data))
            if damage == "extra_member":
                info = tarfile.TarInfo("README")
                info.size = 2
                t.addfile(info, io.BytesIO(b"hi"))
    elif damage == "gzipped":
        import gzip
        tar.write_bytes(gzip.compress(raw))
    status, reason = integrity(run, s)
    assert status == "fail", reason
    code, err = run_cli("verify", str(run), "--labels", str(s))
    assert code == 1 and len(err) == 1, err


@pytest.mark.parametrize("damage", ["not_hdf5", "train_is_a_dataset", "string_labels", "wrong_version"])
def test_damaged_or_foreign_hdf5_fails_without_a_traceback(run, exports, tmp_path, damage):
    h5 = _copy(exports, "l.h5", tmp_path)
    if damage == "not_hdf5":
        h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    else:
        with h5py.File(h5, "r+") as f:
            if damage == "train_is_a_dataset":
                f["train"] = np.arange(3)
            elif damage == "string_labels":
                del f["test/aux_soft"]
                f["test"].create_dataset("aux_soft", data=np.array([b"x"] * 359))
            else:
                f.attrs["format_version"] = 99
    status, reason = integrity(run, h5)
    assert status == "fail", reason


def test_labels_that_are_not_an_export(run, tmp_path):
    (tmp_path / "random.bin").write_bytes(b"\0" * 64)
    (tmp_path / "empty").mkdir()
    for labels in (tmp_path / "random.bin", tmp_path / "empty", run / "config.json", run):
        code, err = run_cli("verify", str(run), "--labels", str(labels))
        assert code == 1 and len(err) == 1, (labels, err)
    code, err = run_cli("verify", str(run), "--labels", str(tmp_path / "missing"))
    one_line_error(code, err, "does not exist")


def test_verify_json_and_checkpoint_usage_errors(run, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    code, err = run_cli("verify", str(run), "--json", str(tmp_path / "folder"))
    one_line_error(code, err, "is a folder")
    code, err = run_cli("verify", str(run), "--json", str(tmp_path / "file" / "r.json"))
    one_line_error(code, err, "is a file")
    code, err = run_cli("verify", str(run), "--checkpoint", str(tmp_path / "nope.pt"))
    one_line_error(code, err, "no such file")
    assert code == 2
    code, err = run_cli("verify", str(run), "--json", str(tmp_path / "deep" / "r.json"))
    assert code == 0 and json.loads((tmp_path / "deep" / "r.json").read_text())["passed"]
