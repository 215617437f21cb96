"""Issue 16's second probe, beyond security (tests/test_security.py): nothing lost, silent wrong results, and
tracebacks or unclear messages, with a campaign of new cases in the same families.

Every error is one line, a non-zero exit, and leaves what existed as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_imagefolder
from PIL import Image

from auxgen.errors import AuxgenError
from auxgen.paths import confined, one_line, refuse_inside
from auxgen.rundir import RunDir, output_lock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from test_faults import FAST, one_line_error  # noqa: E402  (one helper for "one line of an error")

from pipelines import _common, numpy_reader, torch_frozen, wds_stream  # noqa: E402


def snapshot(root: Path) -> dict[str, str]:
    def digest(p: Path) -> str:
        if p.is_symlink():
            return "link:" + os.readlink(p)
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))} if root.exists() else {}


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, symlinks=True)
    return out


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch ImageFolder run (cat, dog) and its tree."""
    from conftest import tiny_config

    from auxgen.trainer import train

    root = tmp_path_factory.mktemp("folder16")
    data = write_imagefolder(root / "data", classes=("cat", "dog"), per_class=6, size=12)
    out = root / "run"
    train(tiny_config(dataset="imagefolder", data_root=str(data), image_size=8, width=4, epochs=1, batch_size=4),
          out, show=False)
    return out, data


# ------------------------------------------------------------------------------ nothing lost: --force
def test_force_deletes_only_auxgens_files(run_copy, cli):
    ck = run_copy / "checkpoints"
    (ck / "my-finetuned.pt").write_bytes(b"mine")
    (ck / "sub").mkdir()
    (ck / "sub" / "notes.txt").write_text("mine too")
    (run_copy / "README.txt").write_text("about this run")
    code, _, err = cli("train", "--out", run_copy, "--force", *FAST)
    assert code == 0, err
    assert (ck / "my-finetuned.pt").read_bytes() == b"mine" and (ck / "sub" / "notes.txt").read_text() == "mine too"
    assert (run_copy / "README.txt").read_text() == "about this run"
    assert (ck / "best.pt").is_file() and len(json.loads((run_copy / "summary.json").read_text())["history"]) == 1


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_force_with_a_foreign_checkpoints_entry_deletes_nothing(run_copy, tmp_path, cli, kind):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run_copy / "checkpoints", elsewhere)
    if kind == "symlink":
        os.symlink(elsewhere, run_copy / "checkpoints")
    else:
        (run_copy / "checkpoints").write_text("not a folder")
    before, linked = snapshot(run_copy), snapshot(elsewhere)
    code, _, err = cli("train", "--out", run_copy, "--force", *FAST)
    one_line_error(code, err, "nothing was deleted")
    assert snapshot(run_copy) == before and snapshot(elsewhere) == linked


def test_force_with_an_auxgen_name_taken_by_a_folder_deletes_nothing(run_copy, cli):
    (run_copy / "summary.json").unlink()
    (run_copy / "summary.json").mkdir()
    (run_copy / "summary.json" / "mine.txt").write_text("x")
    before = snapshot(run_copy)
    code, _, err = cli("train", "--out", run_copy, "--force", *FAST)
    one_line_error(code, err, "is not a file auxgen wrote")
    assert snapshot(run_copy) == before


def test_stale_temp_files_of_auxgen_go_and_a_users_stay(run_copy):
    own = [run_copy / ".config.json.ab12cd.tmp", run_copy / "checkpoints" / ".last.pt.x_9.tmp"]
    users = [run_copy / ".notes.abc123.tmp", run_copy / "checkpoints" / ".my.pt.zz.tmp"]
    for p in own + users:
        p.write_bytes(b"partial")
    RunDir(run_copy).remove_stale_temp_files()
    assert not any(p.exists() for p in own) and all(p.exists() for p in users)


def test_rundir_names_every_file_of_a_run(tiny_run):
    rd = RunDir(tiny_run)
    assert rd.is_run and rd.finished
    for p in (rd.marker, rd.config, rd.metrics, rd.summary, rd.best, rd.last):
        assert p.is_file(), p
    assert rd.checkpoint("best") == rd.best and not RunDir(tiny_run / "checkpoints").is_run


# ------------------------------------------------------------------------------ nothing lost: locks
def test_an_output_lock_refuses_a_second_holder_and_is_removed(tmp_path):
    out = tmp_path / "l.h5"
    with output_lock(out, "busy"):
        assert (tmp_path / ".l.h5.lock").exists()
        with pytest.raises(AuxgenError, match="busy"), output_lock(out, "busy"):
            pass
    assert not (tmp_path / ".l.h5.lock").exists()
    with output_lock(out, "busy"):  # free again
        pass


@pytest.mark.parametrize("fmt, name", [("hdf5", "l.h5"), ("wds", "shards")])
def test_a_second_export_into_one_out_is_refused_while_the_first_runs(tiny_run, tmp_path, cli, fmt, name):
    out = tmp_path / name
    with output_lock(out, "held by the first export"):
        code, _, err = cli("export", tiny_run, "--format", fmt, "--out", out, "--split", "test", "-q")
    one_line_error(code, err, "another auxgen export is writing")
    assert not out.exists()
    code, _, err = cli("export", tiny_run, "--format", fmt, "--out", out, "--split", "test", "-q")
    assert code == 0, err


def test_a_second_training_into_one_run_is_refused(run_copy, cli):
    with RunDir(run_copy).lock():
        code, _, err = cli("train", "--resume", run_copy, "-q")
    one_line_error(code, err, "another auxgen process is training")


# ------------------------------------------------------------------------------ nothing lost: inside inputs
def test_report_out_inside_the_imagefolder_tree_is_refused(folder_run, cli):
    run, data = folder_run
    before = snapshot(data)
    code, _, err = cli("report", run, "--out", data / "report")
    one_line_error(code, err, "is inside the ImageFolder tree")
    assert snapshot(data) == before


def test_verify_on_a_tree_that_gained_a_class_fails_with_the_fingerprint(folder_run, tmp_path, cli):
    run, data = folder_run
    grown = tmp_path / "data"
    shutil.copytree(data, grown)
    write_imagefolder(grown, classes=("zebra",), per_class=6, size=12, seed=3)
    code, out, err = cli("verify", run, "--data-root", grown)
    assert code == 1 and "Traceback" not in err and "fingerprint mismatch" in out


# ------------------------------------------------------------------------------ silent wrong results: images
def _decoded(path: Path) -> np.ndarray:
    from auxgen.data import _load_images

    return _load_images(path.parent, [(path.name, 0)], 8)[0].numpy()


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from auxgen.data import _to_rgb

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
        rgb = np.asarray(_to_rgb(im))
    assert (rgb == 255).mean() < 0.01
    assert np.abs(rgb[..., 0].astype(float) - ramp / 257).max() <= 0.5


def test_jpeg_exif_orientation_is_applied(tmp_path):
    from PIL import ImageOps

    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, 16:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "x.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "x.jpg") as im:
        shown = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (8, 8), Image.BILINEAR)
    got = _decoded(tmp_path / "x.jpg").transpose(1, 2, 0)
    assert np.abs(got.astype(int) - np.asarray(shown).astype(int)).max() <= 1
    assert got[0].mean() < 100 and got[-1].mean() > 150  # black on top, white below, as viewers show it


@pytest.mark.parametrize("hidden", [".ipynb_checkpoints/cat_000-checkpoint.png", "._cat_000.png",
                                    ".cache/deep/x.png"])
def test_hidden_entries_inside_class_folders_are_not_samples(tmp_path, hidden):
    from auxgen.data import _scan_tree

    tree = write_imagefolder(tmp_path / "data", classes=("cat", "dog"), per_class=3, size=8)
    target = tree / "cat" / hidden
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.name.startswith("._"):
        target.write_bytes(b"\x00\x05\x16\x07AppleDouble")  # what macOS writes: not an image
    else:
        shutil.copy(tree / "cat" / "cat_000.png", target)
    classes, items = _scan_tree(tree)
    assert classes == ["cat", "dog"] and len(items) == 6
    assert not any("/." in rel or rel.startswith(".") for rel, _ in items)


def test_a_fifo_named_like_an_image_is_refused(tmp_path):
    from auxgen.data import _scan_tree

    tree = write_imagefolder(tmp_path / "data", classes=("cat", "dog"), per_class=3, size=8)
    os.mkfifo(tree / "cat" / "pipe.png")
    with pytest.raises(AuxgenError, match="not a regular file"):
        _scan_tree(tree)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses names that are not UTF-8")
def test_a_name_that_is_not_utf8_is_one_line_and_no_run_folder(tmp_path, cli):
    tree = write_imagefolder(tmp_path / "data", classes=("cat", "dog"), per_class=4, size=8)
    bad = os.path.join(os.fsencode(tree / "cat"), b"caf\xe9.png")
    shutil.copy(tree / "cat" / "cat_000.png", bad)
    code, _, err = cli("train", "--out", tmp_path / "run", "--dataset", "imagefolder", "--data-root", tree,
                       "--image-size", "8", *FAST)
    one_line_error(code, err, "not valid UTF-8")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ silent wrong results: readers
def write_h5(path: Path, psi=(2, 3), n: int = 12) -> None:
    rng = np.random.default_rng(0)
    k, offsets = sum(psi), np.cumsum((0, *psi[:-1]))
    primary = rng.integers(0, len(psi), n)
    soft = np.zeros((n, k), np.float32)
    for i, p in enumerate(primary):
        w = rng.random(psi[p]).astype(np.float32)
        soft[i, offsets[p]:offsets[p] + psi[p]] = w / w.sum()
    with h5py.File(path, "w") as f:
        f.attrs.update(format="auxgen-labels", format_version=1, psi=np.array(psi), num_primary=len(psi),
                       num_aux=k, dtype="float32", views=0, pad=0)
        g = f.create_group("train")
        g["keys"] = [f"toy/train/{i:06d}" for i in range(n)]
        g["index"], g["primary"], g["aux_soft"] = np.arange(n), primary, soft
        g["aux_hard"], g["entropy"] = soft.argmax(-1), np.zeros(n, np.float32)


def _damage(path: Path, how: str) -> str:
    """Damage an export one way; returns a fragment of the message readers must give."""
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return "cannot be read"
    with h5py.File(path, "r+") as f:
        soft = f["train/aux_soft"][()]
        if how == "nan":
            soft[0, 0] = np.nan
        elif how == "negative":
            soft[1] = -soft[1]
        elif how == "outside-block":
            soft[2] = 1.0 / soft.shape[1]
        elif how == "wrong-k":
            f.attrs["psi"] = np.array([2, 2])
            return "K = sum(psi)"
        elif how == "strings":
            del f["train/primary"]
            f["train/primary"] = np.array([b"x"] * len(soft))
            return "not floats and integers"
        del f["train/aux_soft"]
        f["train/aux_soft"] = soft
    return {"nan": "NaN", "negative": "negative", "outside-block": "inside their primary"}[how]


DAMAGE = ["nan", "negative", "outside-block", "wrong-k", "truncated", "strings"]


READERS = {"numpy_reader": lambda p: numpy_reader.LabelFile(str(p)),
           "torch_frozen": lambda p: torch_frozen.read_split(p, "train")}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("how", DAMAGE)
def test_readers_refuse_damaged_labels_in_one_line(tmp_path, how, reader):
    path = tmp_path / "l.h5"
    write_h5(path)
    fragment = _damage(path, how)
    with pytest.raises(_common.ExportError) as e:
        READERS[reader](path)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_clean_reference_file_still_reads(tmp_path):
    write_h5(tmp_path / "l.h5")
    assert len(numpy_reader.LabelFile(str(tmp_path / "l.h5"))) == 12


@pytest.fixture(scope="module")
def shards(tiny_run, tmp_path_factory) -> Path:
    from auxgen.export import export_labels

    out = tmp_path_factory.mktemp("shards16") / "s"
    export_labels(tiny_run, out, "wds", shard_size="100KB")
    return out


def test_a_missing_shard_is_one_line(shards, tmp_path):
    folder = tmp_path / "s"
    shutil.copytree(shards, folder)
    sorted(folder.glob("train-*.tar"))[-1].unlink()
    with pytest.raises(_common.ExportError, match="listed in the manifest but missing"):
        wds_stream.shard_urls(folder, "train")


def test_shards_without_a_manifest_are_refused_not_guessed(shards, tmp_path):
    folder = tmp_path / "s"
    shutil.copytree(shards, folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(_common.ExportError, match="does not exist"):
        wds_stream.main(["--shards", str(folder), "--epochs", "1"])


def test_nan_labels_in_a_shard_stop_the_stream(shards, tmp_path):
    import io
    import tarfile

    folder = tmp_path / "s"
    shutil.copytree(shards, folder)
    first = sorted(folder.glob("train-*.tar"))[0]
    members, poisoned = [], False
    with tarfile.open(first) as t:
        for m in t.getmembers():
            data = t.extractfile(m).read()
            if m.name.endswith(".aux.npy") and not poisoned:  # the first sample's labels only
                poisoned = True
                arr = np.load(io.BytesIO(data))
                arr[0] = np.nan
                buf = io.BytesIO()
                np.save(buf, arr)
                data = buf.getvalue()
            members.append((m.name, data))
    with tarfile.open(first, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with pytest.raises(_common.ExportError, match="NaN"):
        for _ in wds_stream.stream([str(first)], batch_size=8, shuffle=0, num_aux=50):
            pass


def test_reader_scripts_fail_in_one_line():
    def bad() -> None:
        raise _common.ExportError("labels.h5 is damaged:\nsecond line")
    with pytest.raises(SystemExit) as e:
        _common.run_main(bad)
    assert e.value.code == "error: labels.h5 is damaged: second line"


# ------------------------------------------------------------------------------ tracebacks and unclear messages
def test_report_labels_are_text_never_math(run_copy, tmp_path, cli):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["data"]["class_names"] = ["price $\\frac$"] + [f"${i}" for i in range(1, len(cfg["data"]["class_names"]))]
    (run_copy / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli("report", run_copy, "--out", tmp_path / "rep", "--max-samples", "50")
    assert code == 0, err
    assert "price $\\frac$" in (tmp_path / "rep" / "index.html").read_text()


def test_a_full_disk_during_hdf5_export_is_one_line(tiny_run, tmp_path, cli, monkeypatch):
    import auxgen.export.hdf5 as hdf5

    def fail(self, key, value):
        raise RuntimeError("Can't write data (file write failed: time = now, filename = x)")
    monkeypatch.setattr(h5py.Dataset, "__setitem__", fail)
    monkeypatch.setattr(hdf5.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    code, _, err = cli("export", tiny_run, "--out", tmp_path / "l.h5", "-q")
    one_line_error(code, err, "No space left on device")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("earlier", [False, True])
def test_a_full_disk_during_report_leaves_out_as_it_was(run_copy, tmp_path, cli, monkeypatch, earlier):
    import auxgen.report.builder as builder

    out = tmp_path / "rep"
    if earlier:
        assert cli("report", run_copy, "--out", out, "--max-samples", "50")[0] == 0
    before = snapshot(out)
    real, calls = builder.atomic_write, []

    def full(path, write, mode):
        calls.append(path)
        if len(calls) > 2:
            raise AuxgenError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
        real(path, write, mode)
    monkeypatch.setattr(builder, "atomic_write", full)
    code, _, err = cli("report", run_copy, "--out", out, "--max-samples", "50", "--force")
    one_line_error(code, err, "No space left on device")
    assert snapshot(out) == before


@pytest.mark.parametrize("value, fragment", [("99999999999999", "beyond the year 9999"),
                                             ("abc", "not a whole number"), ("-1", "not a whole number")])
def test_a_bad_source_date_epoch_is_one_line(tiny_run, tmp_path, cli, monkeypatch, value, fragment):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    code, _, err = cli("export", tiny_run, "--out", tmp_path / "l.h5", "--split", "test", "-q")
    one_line_error(code, err, fragment)
    assert not (tmp_path / "l.h5").exists()


def test_a_good_source_date_epoch_is_the_created_time(tiny_run, tmp_path, monkeypatch):
    from auxgen.export import export_labels
    from auxgen.export.manifest import read_manifest

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    export_labels(tiny_run, tmp_path / "l.h5", split="test")
    assert read_manifest(tmp_path / "l.h5.manifest.json")["created"] == "2023-11-14T22:13:20+00:00"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_that_is_not_a_regular_file_says_so(tmp_path, cli, kind):
    path = tmp_path / "c.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    code, _, err = cli("train", "--out", tmp_path / "run", "--config", path, *FAST)
    one_line_error(code, err, "is not a regular file")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_report_with_a_bad_checkpoint_fails(tiny_run, tmp_path, cli, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    code, _, err = cli("report", tiny_run, "--out", tmp_path / "rep", "--checkpoint", bad)
    one_line_error(code, err, "checkpoint")
    assert "--data-root" not in err and not (tmp_path / "rep").exists()


def test_a_fifo_as_checkpoint_is_refused_not_read(tmp_path):
    from auxgen.checkpoint import load_checkpoint

    os.mkfifo(tmp_path / "best.pt")
    with pytest.raises(AuxgenError, match="not a regular file"):
        load_checkpoint(tmp_path / "best.pt")


def test_resuming_a_finished_run_says_it_was_finished(run_copy, cli):
    before = snapshot(run_copy / "checkpoints")
    code, _, err = cli("train", "--resume", run_copy)
    assert code == 0 and "already finished all its epochs" in err
    assert snapshot(run_copy / "checkpoints") == before


@pytest.mark.parametrize("command, says", [("verify", "nothing was written"), ("report", "as it was"),
                                           ("train", "--resume"), ("export", "--resume")])
def test_an_interrupt_says_what_it_left_for_each_command(monkeypatch, capsys, command, says):
    from auxgen import cli

    monkeypatch.setattr(sys, "argv", ["auxgen", command, "x"])
    cli._interrupted("terminated")
    err = capsys.readouterr().err
    assert says in err and ("auxgen train --resume" in err) == (command == "train")


# ------------------------------------------------------------------------------ the shared path helpers
@pytest.mark.parametrize("rel, ok", [("a.tar", True), ("sub/a.tar", True), ("../a.tar", False), ("/abs", False),
                                     ("a/../../b", False), ("", False), ("a\\..\\b", False), ("a\x00b", False),
                                     (7, False)])
def test_confined_keeps_manifest_paths_in_their_folder(tmp_path, rel, ok):
    assert (confined(tmp_path, rel) is not None) == ok


def test_confined_follows_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path, tmp_path / "in" / "up")
    assert confined(tmp_path / "in", "up/secret") is None


def test_one_line_and_refuse_inside(tmp_path):
    assert one_line(RuntimeError("first\nsecond")) == "first" and one_line(KeyError()) == "KeyError"
    with pytest.raises(AuxgenError, match="is inside the export"):
        refuse_inside(tmp_path / "x" / "y", [None, tmp_path / "x"], "--out", "the export")
    refuse_inside(tmp_path / "z", [tmp_path / "x"], "--out")
