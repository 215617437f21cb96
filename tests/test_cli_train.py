"""`auxgen train` end to end through the console entry point, and every user error it reports."""

import json

import pytest
from conftest import write_cifar, write_imagefolder, write_mnist

FAST = ["--backbone", "cnn", "--width", "4", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "-q"]




def _one_line_error(code, err, expected, fragment):
    assert code == expected
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]


def test_help_explains_every_option(cli):
    code, out, _ = cli("train", "--help")
    assert code == 0
    for flag in ("--psi", "--meta-order", "--meta-split", "--resume", "--backbone", "--precision", "--cosine-every"):
        assert flag in out


def test_digits_end_to_end_with_config_file_and_resume(cli, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('dataset = "digits"\nbackbone = "cnn"\nwidth = 4\nepochs = 2\nbatch-size = 32\nseed = 3\n')
    out = tmp_path / "run"
    code, _, err = cli("train", "--config", conf, "--epochs", "1", "--psi", "2", "--out", out, "-q")
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["seed"] == 3 and saved["psi"] == [2] * 10
    code, _, err = cli("train", "--out", out, "-q")
    _one_line_error(code, err, 2, "not empty")
    code, _, err = cli("train", "--resume", out, "--lr", "0.5", "-q")  # (--epochs may grow: tests/test_api.py)
    _one_line_error(code, err, 2, "--lr")
    code, _, err = cli("train", "--resume", out, "-q")  # finished: nothing left to do, still fine
    assert code == 0, err
    code, _, err = cli("train", "--out", out, "--force", *FAST)
    assert code == 0, err


def test_cifar_pickles_end_to_end(cli, tmp_path):
    root = write_cifar(tmp_path / "data", "cifar100", n_train=48, n_test=16)
    out = tmp_path / "c100"
    code, _, err = cli("train", "--dataset", "cifar100", "--data-root", root, "--primary-level", "3",
                       "--psi", "2,3,4", *FAST, "--out", out)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["psi"] == [2, 3, 4] and saved["data"]["image_shape"] == [3, 32, 32] and saved["data"]["augment"]
    assert saved["train"]["data_root"] == str(root.resolve())  # found again from any working directory
    root10 = write_cifar(tmp_path / "data", "cifar10", n_train=40, n_test=10)
    code, _, err = cli("train", "--dataset", "cifar10", "--data-root", root10, *FAST, "--out", tmp_path / "c10")
    assert code == 0, err


def test_imagefolder_and_mnist_end_to_end(cli, tmp_path):
    tree = write_imagefolder(tmp_path / "photos", per_class=10)
    code, _, err = cli("train", "--dataset", "imagefolder", "--data-root", tree, "--image-size", "16", "--psi", "3",
                       *FAST, "--out", tmp_path / "if")
    assert code == 0, err
    saved = json.loads((tmp_path / "if" / "config.json").read_text())
    assert saved["data"]["image_shape"] == [3, 16, 16] and saved["data"]["class_names"] == ["cat", "dog", "owl"]
    root = write_mnist(tmp_path / "m")
    code, _, err = cli("train", "--dataset", "mnist", "--data-root", root, *FAST, "--out", tmp_path / "mn")
    assert code == 0, err


@pytest.mark.parametrize("args,fragment", [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--backbone", "alexnet"], "unknown backbone 'alexnet'"),
    (["--psi", "1,2"], "psi has 2 entries"),
    (["--psi", "0"], "positive"),
    (["--meta-order", "3"], "--meta-order"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent/x"], "/nonexistent/x/cifar-10-batches-py"),
    (["--dataset", "svhn", "--data-root", "/nonexistent/y"], "--download"),
    (["--dataset", "imagefolder", "--data-root", "/nonexistent/z"], "not a folder"),
    (["--method", "human"], "cifar100"),
])
def test_errors_are_one_line(cli, tmp_path, args, fragment):
    code, _, err = cli("train", *args, "--out", tmp_path / "r", "-q")
    _one_line_error(code, err, 2, fragment)
    assert not (tmp_path / "r" / "config.json").exists()


def test_missing_out_and_nan(cli, tmp_path):
    code, _, err = cli("train", "-q")
    _one_line_error(code, err, 2, "--out")
    code, _, err = cli("train", *FAST, "--epochs", "1", "--lr", "1e30", "--gen-lr", "1e30", "--out", tmp_path / "n")
    _one_line_error(code, err, 1, "NaN")
    assert "step" in err


def test_unknown_option_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("train", "--bogus", "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err and "--bogus" in err


def test_failed_download_is_one_line(cli, tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known\n(second line)")

    for name in ("CIFAR10", "MNIST"):
        monkeypatch.setattr(torchvision.datasets, name, offline)
    for dataset in ("cifar10", "mnist"):
        code, _, err = cli("train", "--dataset", dataset, "--download", "--data-root", tmp_path / "d", *FAST,
                           "--out", tmp_path / dataset)
        _one_line_error(code, err, 2, "failed (URLError")
