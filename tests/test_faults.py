"""Fault campaign on the train side: bad input in every slot of `auxgen train` and config loading,
kills at different points, a full disk, permissions, corrupt and foreign files.

Every error must be one line on stderr, a non-zero exit, no traceback, and must leave every file
that existed before as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_cifar, write_imagefolder, write_mnist

from auxgen.checkpoint import RUN_FILE_MODE, atomic_write, load_checkpoint, save_checkpoint
from auxgen.cli import main
from auxgen.errors import AuxgenError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--backbone", "cnn", "--width", "4", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "-q"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions (simulated in another test)")


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def no_training(monkeypatch):
    """For inputs that must be refused before training: a run that starts anyway fails at once
    (instead of training the default vgg16 for 200 epochs)."""
    import auxgen.trainer as trainer  # the train recipe calls auxgen.api.train_run, which calls trainer.train

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the input is bad")

    monkeypatch.setattr(trainer, "train", refuse)


def one_line_error(code: int, err: str, fragment: str) -> str:
    """A non-zero exit and exactly one `error: ...` line holding `fragment`; returns the line."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file under root (empty when root does not exist)."""
    if not root.exists():
        return {}
    if root.is_file():
        return {root.name: (hashlib.sha256(root.read_bytes()).hexdigest(), root.stat().st_mode)}

    def digest(p: Path) -> str:
        if p.is_symlink():
            return "link:" + os.readlink(p)
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"

    return {str(p.relative_to(root)): (digest(p), p.lstat().st_mode) for p in sorted(root.rglob("*"))}


def temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob("*.tmp")]


def write_svhn(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        savemat(root / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                              "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    return root


# ------------------------------------------------------------------------------ the output folder
def test_out_under_a_file_is_one_line(cli, tmp_path):
    (tmp_path / "somefile").write_text("keep me")
    code, _, err = cli("train", "--out", tmp_path / "somefile" / "run", *FAST)
    one_line_error(code, err, "is a file")
    assert (tmp_path / "somefile").read_text() == "keep me"


@needs_non_root
def test_read_only_out_is_one_line(cli, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = cli("train", "--out", out, *FAST)
    finally:
        out.chmod(0o755)
    one_line_error(code, err, str(out))
    assert list(out.iterdir()) == []


def test_unwritable_out_simulated_is_one_line(cli, tmp_path, monkeypatch):
    # what a read-only folder does to a writer that got past any up-front check (root, a
    # read-only mount appearing mid-run): the temporary file cannot be created
    import auxgen.checkpoint as ck

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ck.tempfile, "mkstemp", denied)
    code, _, err = cli("train", "--out", tmp_path / "r", *FAST)
    one_line_error(code, err, "Permission denied")


def test_non_run_folder_is_kept_even_with_force(cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    before = snapshot(out)
    for extra in ([], ["--force"]):
        code, _, err = cli("train", "--out", out, *FAST, *extra)
        one_line_error(code, err, "not empty")
    assert snapshot(out) == before


# ------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("flag,value,fragment", [
    ("--lr", "-0.01", "--lr must be positive"),
    ("--lr", "0", "--lr must be positive"),
    ("--gen-lr", "-1e-3", "--gen-lr must not be negative"),
    ("--momentum", "1.0", "--momentum must be in [0, 1)"),
    ("--momentum", "-0.5", "--momentum must be in [0, 1)"),
    ("--weight-decay", "-1", "--weight-decay must not be negative"),
    ("--gen-weight-decay", "-5e-4", "--gen-weight-decay must not be negative"),
    ("--gamma", "-2", "--gamma must not be negative"),
    ("--entropy-weight", "-0.2", "--entropy-weight must not be negative"),
    ("--cosine-every", "-1", "--cosine-every"),
    ("--seed", "-1", "--seed"),
    ("--seed", str(2**70), "--seed"),  # torch.manual_seed would overflow with a traceback
    ("--width", "100000", "over the limit"),
    ("--image-size", "100000", "over the limit"),
    ("--meta-split", "1.5", "--meta-split"),
])
def test_values_out_of_range_are_one_line(cli, tmp_path, flag, value, fragment):
    code, _, err = cli("train", *FAST, f"{flag}={value}", "--out", tmp_path / "r")
    one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


FLOAT_OPTIONS = ["--lr", "--momentum", "--weight-decay", "--gen-lr", "--gen-weight-decay", "--gamma",
                 "--entropy-weight", "--meta-split"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", FLOAT_OPTIONS)
def test_non_finite_floats_are_refused_up_front(cli, tmp_path, flag, value):
    code, _, err = cli("train", *FAST, f"{flag}={value}", "--out", tmp_path / "r")
    one_line_error(code, err, "finite")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["--epochs", "two"], ["--epochs", "1.5"], ["--lr", "fast"], ["--seed", "1e3"],
                                  ["--width", ""], ["--precision", "fp16"]])
def test_wrong_types_on_the_command_line_are_usage_errors(cli, tmp_path, args):
    code, _, err = cli("train", *FAST, *args, "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err and err.strip()
    assert not (tmp_path / "r").exists()


def test_test_root_on_a_dataset_with_its_own_test_split(cli, tmp_path):
    code, _, err = cli("train", *FAST, "--test-root", tmp_path, "--out", tmp_path / "r")
    one_line_error(code, err, "--test-root is for --dataset imagefolder")


# ------------------------------------------------------------------------------ psi
@pytest.mark.parametrize("spec,fragment", [
    ("", "--psi is empty"),
    ("  ", "--psi is empty"),
    ("2,,3", "empty item"),
    ("2,3,", "empty item"),
    ("1_000", "not an integer"),
    ("2.5", "not an integer"),
    ("100000", "over the limit of 1000"),
])
def test_psi_specs_that_used_to_pass_silently(cli, tmp_path, spec, fragment):
    code, _, err = cli("train", *FAST, "--psi", spec, "--out", tmp_path / "r")
    one_line_error(code, err, fragment)


def test_total_auxiliary_classes_are_capped(cli, tmp_path):
    from auxgen.hierarchy import MAX_AUX_CLASSES, parse_psi

    assert parse_psi("1000", None, 10).num_aux == MAX_AUX_CLASSES  # the limit itself is allowed
    with pytest.raises(AuxgenError, match="over the limit of 10000"):
        parse_psi("1000", None, 11)
    root = write_cifar(tmp_path / "d", "cifar100", n_train=20, n_test=10)
    code, _, err = cli("train", *FAST, "--dataset", "cifar100", "--data-root", root, "--psi", "600",
                       "--out", tmp_path / "r")
    one_line_error(code, err, "12000 auxiliary classes")  # 20 primary classes x 600


@pytest.mark.parametrize("content,fragment", [
    (None, "is a folder"),
    (b"\xff\xfe[\x002\x00]\x00", "not UTF-8"),
    (b"[2.5, 3]", "positive integers"),
    (b"[true, true]", "positive integers"),
    (b"[]", "0 entries"),
    (b"[[1, 2]]", "positive integers"),
    (b'{"psi": [100000, 1]}', "over the limit"),
    (b'{"psy": [1, 2]}', "must hold a list"),
    (b"", "not valid JSON"),
])
def test_bad_psi_files(cli, tmp_path, content, fragment):
    f = tmp_path / "psi.json"
    if content is None:
        f.mkdir()
    else:
        f.write_bytes(content)
    before = snapshot(tmp_path)
    code, _, err = cli("train", *FAST, "--psi-file", f, "--out", tmp_path / "r")
    one_line_error(code, err, fragment)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("r")} == before


def test_unreadable_psi_file_simulated(tmp_path, monkeypatch):
    from auxgen.hierarchy import parse_psi

    f = tmp_path / "psi.json"
    f.write_text("[2, 2]")
    real = Path.read_bytes

    def denied(self):
        if self == f:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(AuxgenError, match="cannot be read \\(Permission denied\\)"):
        parse_psi(None, f, 2)


# ------------------------------------------------------------------------------ config files
@pytest.mark.parametrize("name,content,fragment", [
    ("c.json", '{"epochs": "two"}', "option epochs must be an integer, got str 'two'"),
    ("c.json", '{"epochs": true}', "option epochs must be an integer, got bool True"),
    ("c.json", '{"epochs": 1e400}', "option epochs must be an integer"),
    ("c.json", '{"epochs": null}', "option epochs must be an integer"),
    ("c.json", '{"lr": "0.1"}', "option lr must be a number, got str"),
    ("c.json", '{"width": 4.5}', "option width must be an integer or null"),
    ("c.json", '{"download": 1}', "option download must be true or false"),
    ("c.json", '{"psi": 5.5}', "option psi must be a string or null"),  # psi = 5 is accepted (tests/test_api.py)
    ("c.json", '{"lr": NaN}', "--lr must be a finite number"),
    ("c.json", '{"train": 5}', '"train" must be a table'),
    ("c.json", "[1, 2]", "must hold a table/object"),
    ("c.json", "", "is not valid JSON"),
    ("c.json", '{"epochs": 2,}', "is not valid JSON"),
    ("c.yaml", "epochs: 2\n", "files not named .toml are read as JSON"),
    ("c.toml", "epochs = \n", "is not valid TOML"),
    ("c.toml", "epochs = 2024-01-01\n", "option epochs must be an integer, got date"),
    ("c.toml", "[train]\nbatch-size = [64]\n", "option batch_size must be an integer"),
    ("c.json", '{"epoch": 2}', "unknown option(s) epoch"),
])
def test_bad_config_files(cli, no_training, tmp_path, name, content, fragment):
    conf = tmp_path / name
    conf.write_text(content, encoding="utf-8")
    code, _, err = cli("train", "--config", conf, "--out", tmp_path / "r", "-q")
    one_line_error(code, err, fragment.replace("batch_size", "batch-size"))
    assert not (tmp_path / "r").exists()


def test_config_types_follow_the_dataclass(tmp_path):
    from auxgen.config import TrainConfig, resolve_config

    conf = tmp_path / "c.json"
    conf.write_text('{"lr": 1, "width": null, "epochs": 3}')  # int passes as float, None for Optional
    cfg = resolve_config(conf, {})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.width is None and cfg.epochs == 3
    with pytest.raises(AuxgenError, match="option epochs must be an integer, got bool"):
        TrainConfig(epochs=True).validate()  # the Python API is checked too


def test_config_not_utf8_and_bom(cli, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_bytes('{"dataset": "digits", "psi": "é"}'.encode("latin-1"))
    code, _, err = cli("train", "--config", conf, "--out", tmp_path / "r", "-q")
    one_line_error(code, err, "is not UTF-8 text (byte 0xe9")
    conf.write_bytes(b"\xef\xbb\xbf" + b'{"epochs": 1, "backbone": "cnn", "width": 4, "batch_size": 64}')
    code, _, err = cli("train", "--config", conf, "--out", tmp_path / "r", "-q")  # a BOM is harmless
    assert code == 0, err


def test_config_that_is_a_folder_or_missing(cli, no_training, tmp_path):
    code, _, err = cli("train", "--config", tmp_path, "--out", tmp_path / "r", "-q")
    one_line_error(code, err, "is a folder")
    code, _, err = cli("train", "--config", tmp_path / "none.toml", "--out", tmp_path / "r", "-q")
    one_line_error(code, err, "does not exist")


@needs_non_root
def test_unreadable_config_file(cli, no_training, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text("{}")
    conf.chmod(0)
    code, _, err = cli("train", "--config", conf, "--out", tmp_path / "r", "-q")
    one_line_error(code, err, "cannot be read")


def test_unreadable_config_file_simulated(cli, no_training, tmp_path, monkeypatch):
    conf = tmp_path / "c.json"
    conf.write_text("{}")
    real = Path.read_bytes

    def denied(self):
        if self == conf:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    code, _, err = cli("train", "--config", conf, "--out", tmp_path / "r", "-q")
    one_line_error(code, err, "cannot be read (Permission denied)")


def test_config_loads_without_tomllib(tmp_path):
    # Python 3.10 has no tomllib: config.py must fall back to the tomli package
    script = ("import sys, tomllib; sys.modules['tomli'] = tomllib; sys.modules['tomllib'] = None\n"
              "import auxgen.config as c; assert c.tomllib.__name__ == 'tomllib'; print('ok')")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_pyproject_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert project["requires-python"] == ">=3.10"
    assert 'tomli>=1.1; python_version < "3.11"' in deps
    assert any(d.startswith("webdataset>=0.2.86") for d in deps) and "matplotlib>=3.6" in deps
    assert not [d for d in deps if d.startswith("torch") and "==" in d]  # ranges only


# ------------------------------------------------------------------------------ dataset files
def _cifar_root(tmp_path: Path, mutate) -> Path:
    root = write_cifar(tmp_path / "data", "cifar10", n_train=40, n_test=10)
    mutate(root / "cifar-10-batches-py" / "data_batch_1")
    return root


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickle_of(obj) -> bytes:
    return pickle.dumps(obj)


@pytest.mark.parametrize("kind,fragment", [
    ("list", "is a pickle of a list, not a CIFAR batch"),
    ("no-keys", "no 'data' or 'labels' entry (it has 'batch_label')"),
    ("text", "is not a pickle file"),
    ("truncated", "is truncated"),
    ("empty", "is empty (0 bytes)"),
    ("shape", "3072 uint8 values (3x32x32) per label"),
    ("labels", "label 12 is outside 0..9"),
    ("fewer-labels", "for 3 labels"),
    ("code", "refused: unpickling it could run code"),
])
def test_bad_cifar_batches(cli, tmp_path, kind, fragment):
    marker = str(tmp_path / "pwned")

    def mutate(p: Path) -> None:
        good = p.read_bytes()
        p.write_bytes({
            "list": lambda: _pickle_of([1, 2, 3]),
            "no-keys": lambda: _pickle_of({"batch_label": "x"}),
            "text": lambda: b"this is not a pickle\n",
            "truncated": lambda: good[:len(good) // 2],
            "empty": lambda: b"",
            "shape": lambda: _pickle_of({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}),
            "labels": lambda: _pickle_of({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}),
            "fewer-labels": lambda: _pickle_of({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}),
            "code": lambda: _pickle_of({"data": _RunsCode(marker), "labels": []}),
        }[kind]())

    root = _cifar_root(tmp_path, mutate)
    code, _, err = cli("train", "--dataset", "cifar10", "--data-root", root, *FAST, "--out", tmp_path / "r")
    one_line_error(code, err, fragment)
    assert "data_batch_1" in err
    assert not os.path.exists(marker)  # the pickle did not get to run anything


@pytest.mark.parametrize("kind,fragment", [
    ("truncated", "is truncated"),
    ("text", "is not an idx file"),
    ("gzip", "gzip-compressed"),
    ("empty", "is not an idx file"),
    ("count", "holds 40 images but train-labels-idx1-ubyte 5 labels"),
    ("label", "label 200 is outside 0..9"),
    ("trailing", "bytes after the data"),
])
def test_bad_mnist_idx_files(cli, tmp_path, kind, fragment):
    import gzip

    root = write_mnist(tmp_path / "m")
    raw = root / "MNIST" / "raw"
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    {
        "truncated": lambda: images.write_bytes(images.read_bytes()[:1000]),
        "text": lambda: images.write_text("not an idx file at all"),
        "gzip": lambda: images.write_bytes(gzip.compress(images.read_bytes())),
        "empty": lambda: labels.write_bytes(b""),
        "count": lambda: labels.write_bytes(struct.pack(">II", 0x801, 5) + bytes(5)),
        "label": lambda: labels.write_bytes(struct.pack(">II", 0x801, 40) + bytes([200] * 40)),
        "trailing": lambda: labels.write_bytes(labels.read_bytes() + b"junk"),
    }[kind]()
    code, _, err = cli("train", "--dataset", "mnist", "--data-root", root, *FAST, "--out", tmp_path / "r")
    one_line_error(code, err, fragment)


@pytest.mark.parametrize("kind,fragment", [
    ("text", "is not a MATLAB .mat file"),
    ("truncated", "is truncated or damaged"),
    ("no-vars", "needs variables X and y (it has Z)"),
    ("shape", "SVHN's is uint8 of shape [32, 32, 3, N]"),
    ("count", "y holds 3 labels for 4 images"),
    ("labels", "labels must be 1..10"),
    ("hdf5", "is not a MATLAB .mat file"),
])
def test_bad_svhn_mat_files(cli, tmp_path, kind, fragment):
    from scipy.io import savemat

    root = write_svhn(tmp_path / "s")
    p = root / "train_32x32.mat"
    if kind == "hdf5":
        import h5py

        p.unlink()
        with h5py.File(p, "w") as f:
            f["X"] = np.zeros((4, 3, 32, 32), np.uint8)
    else:
        {
            "text": lambda: p.write_text("hello"),
            "truncated": lambda: p.write_bytes(p.read_bytes()[:600]),
            "no-vars": lambda: savemat(p, {"Z": np.zeros(3)}),
            "shape": lambda: savemat(p, {"X": np.zeros((5, 5), np.uint8), "y": np.zeros((5, 1))}),
            "count": lambda: savemat(p, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1))}),
            "labels": lambda: savemat(p, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [40]])}),
        }[kind]()
    code, _, err = cli("train", "--dataset", "svhn", "--data-root", root, *FAST, "--out", tmp_path / "r")
    one_line_error(code, err, fragment)


@pytest.mark.parametrize("kind,fragment", [
    ("not-image", "cannot identify image file"),
    ("truncated", "image file is truncated"),
    ("empty-file", "the file is empty (0 bytes)"),
    ("empty-class", "holds no images"),
    ("one-class", "a primary task needs at least 2 classes"),
    ("folder-named-png", "Is a directory"),
    ("broken-link", "No such file or directory"),
    ("bomb", "decompression bomb"),
])
def test_bad_imagefolder_trees(cli, tmp_path, monkeypatch, kind, fragment):
    import shutil

    import PIL.Image

    tree = write_imagefolder(tmp_path / "photos", per_class=4)
    first = tree / "cat" / "cat_000.png"
    {
        "not-image": lambda: first.write_text("plain text with a .png name"),
        "truncated": lambda: first.write_bytes(first.read_bytes()[:150]),
        "empty-file": lambda: first.write_bytes(b""),
        "empty-class": lambda: (tree / "zebra").mkdir(),
        "one-class": lambda: (shutil.rmtree(tree / "dog"), shutil.rmtree(tree / "owl")),
        "folder-named-png": lambda: (tree / "cat" / "x.png").mkdir(),
        "broken-link": lambda: os.symlink(tmp_path / "gone.png", tree / "cat" / "link.png"),
        "bomb": lambda: monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100),
    }[kind]()
    before = snapshot(tree)
    code, _, err = cli("train", "--dataset", "imagefolder", "--data-root", tree, "--image-size", "8", *FAST,
                       "--out", tmp_path / "r")
    one_line_error(code, err, fragment)
    assert snapshot(tree) == before


def test_imagefolder_test_root_with_an_empty_class(cli, tmp_path):
    tree = write_imagefolder(tmp_path / "tr", per_class=4)
    test = write_imagefolder(tmp_path / "te", per_class=1)
    for f in (test / "owl").iterdir():
        f.unlink()
    code, _, err = cli("train", "--dataset", "imagefolder", "--data-root", tree, "--test-root", test,
                       "--image-size", "8", *FAST, "--out", tmp_path / "r")
    one_line_error(code, err, "owl holds no images")


@needs_non_root
def test_unreadable_data_root(cli, tmp_path):
    tree = write_imagefolder(tmp_path / "photos", per_class=4)
    tree.chmod(0)
    try:
        code, _, err = cli("train", "--dataset", "imagefolder", "--data-root", tree, *FAST, "--out", tmp_path / "r")
    finally:
        tree.chmod(0o755)
    one_line_error(code, err, "Permission denied")


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10"])
def test_unreadable_data_simulated(cli, tmp_path, monkeypatch, dataset):
    # what chmod 000 does for a non-root user: the listing or the open is refused
    if dataset == "imagefolder":
        root = write_imagefolder(tmp_path / "photos", per_class=4)
        blocked, name = root, "iterdir"
    else:
        root = write_cifar(tmp_path / "c", "cifar10", n_train=40, n_test=10)
        blocked, name = root / "cifar-10-batches-py" / "data_batch_3", "read_bytes"
    real = getattr(Path, name)

    def denied(self, *a, **kw):
        if self == blocked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, name, denied)
    code, _, err = cli("train", "--dataset", dataset, "--data-root", root, *FAST, "--out", tmp_path / "r")
    line = one_line_error(code, err, "Permission denied")
    assert str(blocked) in line


# ------------------------------------------------------------------------------ checkpoints
def test_run_files_are_private_and_exports_can_choose(tmp_path):
    old = os.umask(0)  # the mode is set explicitly, whatever the umask
    try:
        save_checkpoint({"format": 1, "epoch": 1, "model": {}}, tmp_path / "last.pt")
        atomic_write(tmp_path / "shared.bin", lambda tmp: Path(tmp).write_bytes(b"x"), mode=0o644)
    finally:
        os.umask(old)
    assert RUN_FILE_MODE == 0o600
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared.bin").stat().st_mode & 0o777 == 0o644


def test_run_directory_files_are_0600(cli, tmp_path):
    code, _, err = cli("train", "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    for f in [tmp_path / "r" / "config.json", tmp_path / "r" / "metrics.jsonl",
              tmp_path / "r" / "checkpoints" / "last.pt"]:
        assert f.stat().st_mode & 0o777 == RUN_FILE_MODE, f


@pytest.mark.parametrize("kind,fragment", [
    ("truncated", "is truncated"),
    ("empty", "is empty (0 bytes)"),
    ("tensor", "a torch file but not an auxgen checkpoint (it holds a Tensor)"),
    ("dict", "not an auxgen checkpoint (it holds a dict without format, epoch, model)"),
    ("pickle", "not an auxgen checkpoint (not the zip archive"),
    ("text", "not an auxgen checkpoint (not the zip archive"),
    ("objects", "holds objects a checkpoint never has"),
    ("zip", "cannot be read as a torch file"),
    ("folder", "is a folder"),
])
def test_foreign_and_truncated_checkpoints(tmp_path, kind, fragment):
    import zipfile

    p = tmp_path / "last.pt"
    good = {"format": 1, "epoch": 1, "model": {"w": torch.zeros(100)}}
    if kind == "truncated":
        torch.save(good, p)
        p.write_bytes(p.read_bytes()[:-50])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), p)
    elif kind == "dict":
        torch.save({"state_dict": {}}, p)
    elif kind == "pickle":
        p.write_bytes(pickle.dumps([1, 2, 3]))
    elif kind == "text":
        p.write_text("hello")
    elif kind == "objects":
        torch.save({**good, "extra": Path("somewhere")}, p)
    elif kind == "zip":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("notes.txt", "not a checkpoint")
    else:
        p.mkdir()
    with pytest.raises(AuxgenError, match=None) as info:
        load_checkpoint(p)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch digits run made through the CLI. Tests copy it before changing it."""
    out = tmp_path_factory.mktemp("faults") / "run"
    _main(["train", "--out", out, *FAST, "--epochs", "2"])
    return out


def _main(args) -> int:
    argv = sys.argv
    sys.argv = ["auxgen", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        return e.code or 0
    finally:
        sys.argv = argv
    return 0


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind,fragment", [
    ("truncated-last", "is truncated"),
    ("tensor-last", "not an auxgen checkpoint"),
    ("handwritten-config", "is not a run's configuration"),
    ("config-not-utf8", "is not UTF-8 text"),
    ("config-garbage", "is not valid JSON"),
    ("psi-edited", "psi"),
])
def test_resume_from_damaged_runs(cli, tmp_path, finished_run, kind, fragment):
    run = _copy_run(finished_run, tmp_path / "run")
    # make the run look interrupted after epoch 1 by asking for more epochs is not allowed on
    # --resume, so damage a finished run: resume must still read everything before saying "done"
    last, conf = run / "checkpoints" / "last.pt", run / "config.json"
    if kind == "truncated-last":
        last.write_bytes(last.read_bytes()[:1000])
    elif kind == "tensor-last":
        torch.save(torch.zeros(2), last)
    elif kind == "handwritten-config":
        conf.write_text('{"dataset": "digits", "epochs": 2}')
    elif kind == "config-not-utf8":
        conf.write_bytes(conf.read_bytes().replace(b'"digits"', b'"d\xefgits"'))
    elif kind == "config-garbage":
        conf.write_bytes(conf.read_bytes()[:100])
    else:
        saved = json.loads(conf.read_text())
        saved["train"]["psi"] = "3"
        conf.write_text(json.dumps(saved))
    before = snapshot(run)
    code, _, err = cli("train", "--resume", run, "-q")
    one_line_error(code, err, fragment)
    assert snapshot(run) == before


def test_resume_of_what_is_not_a_run(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "missing", tmp_path):
        code, _, err = cli("train", "--resume", target, "-q")
        one_line_error(code, err, "no config.json")


@pytest.mark.parametrize("args,fragment", [
    (["--dataset", "cifar10", "--data-root", "/nonexistent/c10"], "cifar10 not found"),
    (["--psi", "1,2"], "psi has 2 entries"),
    (["--psi-file", "/nonexistent/psi.json"], "does not exist"),
])
def test_force_keeps_the_earlier_run_when_the_new_inputs_fail(cli, tmp_path, finished_run, args, fragment):
    run = _copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    code, _, err = cli("train", "--out", run, "--force", *FAST, *args)
    one_line_error(code, err, fragment)
    assert snapshot(run) == before


def test_force_keeps_the_earlier_run_when_setup_fails(cli, tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    code, _, err = cli("train", "--out", run, "--force", *FAST, "--batch-size", "5000")
    one_line_error(code, err, "fewer than one batch")
    assert snapshot(run) == before


def test_out_inside_the_imagefolder_tree(cli, tmp_path):
    tree = write_imagefolder(tmp_path / "photos", per_class=4)
    before = snapshot(tree)
    code, _, err = cli("train", "--dataset", "imagefolder", "--data-root", tree, *FAST, "--out", tree / "run")
    one_line_error(code, err, "is inside the ImageFolder tree")
    assert snapshot(tree) == before


# ------------------------------------------------------------------------------ full disk
@pytest.mark.parametrize("how", ["enospc", "dev-full"])
def test_full_disk_during_a_checkpoint_write(cli, tmp_path, monkeypatch, how):
    """The epoch-2 checkpoint write fails: one line, epoch 1's checkpoint intact, no temp file."""
    import auxgen.checkpoint as ck

    if how == "dev-full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real, calls = ck._torch_save, {"n": 0}

    def failing(state, tmp):
        calls["n"] += 1
        if calls["n"] < 3:  # epoch 1: best.pt and last.pt
            return real(state, tmp)
        if how == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with open("/dev/full", "wb") as f:  # a real ENOSPC from the kernel, through torch's writer
            torch.save(state, f)

    monkeypatch.setattr(ck, "_torch_save", failing)
    out = tmp_path / "r"
    code, _, err = cli("train", "--out", out, *FAST, "--epochs", "2")
    one_line_error(code, err, "No space left on device")
    assert "best.pt" in err or "last.pt" in err  # best.pt first when epoch 2 improved
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert temp_files(out) == []


def test_full_disk_during_metrics_write(cli, tmp_path, monkeypatch):
    import auxgen.checkpoint as ck

    real, seen = ck.atomic_write, {"n": 0}

    def failing(path, write, mode=RUN_FILE_MODE):
        if Path(path).name == "metrics.jsonl":
            seen["n"] += 1
            if seen["n"] == 2:
                def write(tmp):
                    Path(tmp).write_bytes(b"{\"epoch\": 1")  # part of it reached the disk
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write, mode)

    monkeypatch.setattr(ck, "atomic_write", failing)
    out = tmp_path / "r"
    code, _, err = cli("train", "--out", out, *FAST, "--epochs", "2")
    one_line_error(code, err, "No space left on device")
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert temp_files(out) == []


# ------------------------------------------------------------------------------ concurrency
def test_a_second_trainer_on_a_busy_run_directory_is_refused(cli, tmp_path, finished_run):
    fcntl = pytest.importorskip("fcntl")
    run = _copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a training process holds it
    try:
        for args in (["--resume", run, "-q"], ["--out", run, "--force", *FAST]):
            code, _, err = cli("train", *args)
            one_line_error(code, err, "another auxgen process is training into")
    finally:
        os.close(fd)
    assert snapshot(run) == before
    code, _, err = cli("train", "--out", run, "--force", *FAST)  # released: --force replaces it
    assert code == 0, err


# ------------------------------------------------------------------------------ kills and resume
# 3 epochs of ~90 steps: long enough that a kill after the first last.pt lands before the end
KILL_ARGS = ["--backbone", "cnn", "--width", "4", "--epochs", "3", "--batch-size", "16", "--device", "cpu", "-q"]
# a training process that kills itself (SIGKILL: no cleanup, no finally) at a chosen point:
# AUXGEN_TEST_KILL=load (while loading the data) or save:N (halfway through the N-th checkpoint write)
KILLER = r"""
import dataclasses, io, os, signal, sys
import torch
import auxgen.checkpoint as ck
import auxgen.data as data

where, _, at = os.environ["AUXGEN_TEST_KILL"].partition(":")

def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)

if where == "load":
    data.DATASETS["digits"] = dataclasses.replace(data.DATASETS["digits"], load=die)
else:
    real, calls = ck._torch_save, [0]

    def dying(state, tmp):
        calls[0] += 1
        if calls[0] == int(at):
            buf = io.BytesIO()
            torch.save(state, buf)
            with open(tmp, "wb") as f:
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            die()
        real(state, tmp)

    ck._torch_save = dying
from auxgen.cli import main
sys.argv = ["auxgen", *sys.argv[1:]]
main()
"""


def _env(**extra: str) -> dict[str, str]:
    # one thread, as the in-process runs of this suite (conftest), so runs agree to the bit
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _train_subprocess(out: Path, kill: str | None = None, **popen) -> subprocess.Popen:
    cmd = ([sys.executable, "-c", KILLER] if kill else [sys.executable, "-m", "auxgen.cli"])
    env = _env(AUXGEN_TEST_KILL=kill) if kill else _env()
    return subprocess.Popen([*cmd, "train", "--out", str(out), *KILL_ARGS], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every killed-and-resumed run must end identical to (a subprocess too)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _train_subprocess(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_end(run: Path, ref: Path) -> None:
    """The resumed run ends bit-identical to the uninterrupted one: weights, optimiser, metrics."""
    a, b = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(ref / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for part in ("model", "generator"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for part in ("optimizer", "gen_optimizer"):
        for k, st in a[part]["state"].items():
            for name, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b[part]["state"][k][name])), (part, k, name)
    assert _history(run) == _history(ref)
    assert temp_files(run) == []


def test_kill_9_mid_run_then_resume_is_bit_identical(cli, tmp_path, reference):
    out = tmp_path / "run"
    proc = _train_subprocess(out)
    _wait_for(out / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] < 3  # killed before the end
    code, _, err = cli("train", "--resume", out, "-q")
    assert code == 0, err
    assert_same_end(out, reference)


@pytest.mark.parametrize("kill,stale", [
    ("save:3", True),   # halfway through epoch 2's first checkpoint write: epoch 1's last.pt stays intact
    ("save:1", True),   # halfway through the first checkpoint (best.pt): none yet, resume starts at epoch 1
])
def test_kill_9_during_a_checkpoint_write(cli, tmp_path, reference, kill, stale):
    out = tmp_path / "run"
    proc = _train_subprocess(out, kill=kill)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    # the half-written file: best.pt comes first in an epoch that improves, then last.pt
    assert [p.name.startswith((".best.pt.", ".last.pt.")) for p in temp_files(out)] == [True]
    last = out / "checkpoints" / "last.pt"
    assert (load_checkpoint(last)["epoch"] == 1) if kill == "save:3" else not last.exists()
    code, _, err = cli("train", "--resume", out, "-q")
    assert code == 0, err
    assert_same_end(out, reference)  # and the stale temporary file is gone


def test_kill_9_while_loading_data(cli, tmp_path, reference):
    out = tmp_path / "run"
    proc = _train_subprocess(out, kill="load")
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the run folder is made only once the data has loaded
    code, _, err = cli("train", "--resume", out, "-q")
    one_line_error(code, err, "no config.json")
    code, _, err = cli("train", "--out", out, *KILL_ARGS)  # the empty folder is taken as is
    assert code == 0, err
    assert_same_end(out, reference)


def test_sigterm_mid_run_cleans_up_and_resumes(cli, tmp_path, reference):
    out = tmp_path / "run"
    proc = _train_subprocess(out)
    _wait_for(out / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("terminated;")
    assert temp_files(out) == []  # unwound like Ctrl-C: a write in progress removed its temporary file
    code, _, err = cli("train", "--resume", out, "-q")
    assert code == 0, err
    assert_same_end(out, reference)


# ------------------------------------------------------------------------------ for trainer.py
def test_kill_9_between_last_and_best_keeps_best_consistent(cli, tmp_path, reference):
    history = _history(reference)
    improved = [m["test_acc"] > max([-1.0] + [h["test_acc"] for h in history[:i]]) for i, m in enumerate(history)]
    later = [e for e in range(2, len(history) + 1) if improved[e - 1]]
    if not later:
        pytest.skip("the reference run improves only in epoch 1")
    e = later[-1]  # the last epoch that improves: nothing after it rewrites best.pt
    call = sum(1 + improved[i] for i in range(e - 1)) + 2  # epoch e's second write (best.pt today)
    out = tmp_path / "run"
    proc = _train_subprocess(out, kill=f"save:{call}")
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    code, _, err = cli("train", "--resume", out, "-q")
    assert code == 0, err
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["epoch"] == load_checkpoint(reference / "checkpoints" / "best.pt")["epoch"] == e


def test_folder_left_by_a_kill_during_the_first_write_can_be_reused(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.k2j3h4.tmp").write_text('{"train": ')
    code, _, err = cli("train", "--out", out, *FAST)
    assert code == 0, err


def test_resume_refuses_another_checkpoint_format(cli, tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["format"] = 99
    state["epoch"] = 1  # so that resume has an epoch left to run with it
    torch.save(state, last)
    code, _, err = cli("train", "--resume", run, "-q")
    one_line_error(code, err, "format")
