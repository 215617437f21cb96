"""The Python API (auxgen.train / export / label / resume), and the packaging of pipelines/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

import auxgen
from auxgen.errors import AuxgenError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", backbone="cnn", width=8, epochs=2, batch_size=64, lr=0.05, gen_lr=0.05, seed=0,
            device="cpu", meta_weight=1.0, consistency_weight=0.0, pairs="views", meta_every=1)  # as tiny_config


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return auxgen.train(TINY, out)


def test_import_auxgen_stays_light():
    code = ("import sys, auxgen; auxgen.__version__; bad = [m for m in ('torch', 'numpy', 'auxgen.api') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_train_returns_a_run_with_summary_and_networks(api_run):
    run = api_run
    assert isinstance(run, auxgen.Run)
    assert run.summary["epochs"] == 2 and run.summary["method"] == "maxl"
    assert json.loads((run.path / "summary.json").read_text())["best_test_acc"] == run.summary["best_test_acc"]
    assert len(run.metrics) == 2 and run.config.backbone == "cnn"
    assert run.generator is run.load().generator  # loaded once, then kept
    assert isinstance(run.model, torch.nn.Module) and not run.model.training


def test_train_config_and_dict_agree(tmp_path, api_run):
    from auxgen.api import resolve_options

    a = resolve_options(tiny_config())
    b = resolve_options({k.replace("_", "-"): v for k, v in TINY.items()})  # dashes as in config files
    assert a == b
    assert json.loads((api_run.path / "config.json").read_text())["train"] == a.to_dict()


@pytest.mark.parametrize("config, fragment", [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"epoch": 3}, "unknown option"),
    ({"lr": "fast"}, "must be a number"),
    ({"backbone": "nope"}, "unknown backbone"),
    ("digits", "TrainConfig or a dict"),
])
def test_train_bad_options_are_one_line_errors(tmp_path, config, fragment):
    with pytest.raises(AuxgenError) as e:
        auxgen.train(config, tmp_path / "run")
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_export_and_label_agree_exactly(api_run, tmp_path):
    from auxgen.export import read_export
    from auxgen.run import load_run_data

    summary = auxgen.export(api_run, tmp_path / "labels.h5", split="all")
    assert Path(summary["manifest"]).is_file()
    exported = read_export(tmp_path / "labels.h5")
    data = load_run_data(api_run.load())
    for name, split in (("train", data.train), ("test", data.test)):
        soft = auxgen.label(api_run, split.images, split.labels)
        assert soft.dtype == np.float32 and soft.shape == exported.splits[name].aux_soft.shape
        assert np.array_equal(soft, exported.splits[name].aux_soft)
    # the same from a run directory path, numpy NHWC images, a list of labels, and the bare generator
    x, y = data.test.images[:37], data.test.labels[:37]
    ref = auxgen.label(api_run, x, y)
    nhwc = x.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(auxgen.label(str(api_run.path), nhwc, y.tolist()), ref)
    assert np.array_equal(auxgen.label(api_run.generator, x.numpy(), y.numpy()), ref)
    assert np.allclose(ref.sum(axis=1), 1.0, atol=1e-5)


def test_export_through_the_api_and_the_cli_write_the_same_labels(api_run, tmp_path, cli):
    from auxgen.export import read_export

    auxgen.export(api_run.path, tmp_path / "a.h5", split="test")
    code, _, err = cli("export", api_run.path, "--out", tmp_path / "b.h5", "--split", "test", "-q")
    assert code == 0, err
    a, b = read_export(tmp_path / "a.h5"), read_export(tmp_path / "b.h5")
    assert np.array_equal(a.splits["test"].aux_soft, b.splits["test"].aux_soft)


@pytest.mark.parametrize("images, primary, fragment", [
    (np.zeros((4, 1, 8, 8), np.float32), [0, 1, 2, 3], "must be uint8"),
    (np.zeros((4, 1, 9, 9), np.uint8), [0, 1, 2, 3], "the run was trained on"),
    (np.zeros((4, 8), np.uint8), [0, 1, 2, 3], "must be a batch"),
    ([[0]], [0], "numpy array or a torch tensor"),
    (np.zeros((4, 1, 8, 8), np.uint8), [0, 1, 2], "one class index per image"),
    (np.zeros((4, 1, 8, 8), np.uint8), [0, 1, 2, 99], "outside 0..9"),
    (np.zeros((4, 1, 8, 8), np.uint8), [0, 1, 2, -1], "outside"),
    (np.zeros((4, 1, 8, 8), np.uint8), [0.0, 1.0, 2.0, 3.0], "integer class indices"),
])
def test_label_bad_input_is_one_line_error(api_run, images, primary, fragment):
    with pytest.raises(AuxgenError) as e:
        auxgen.label(api_run, images, primary)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_label_and_export_of_what_is_not_a_run(tmp_path):
    with pytest.raises(AuxgenError, match="not an auxgen run directory"):
        auxgen.label(tmp_path, np.zeros((1, 1, 8, 8), np.uint8), [0])
    with pytest.raises(AuxgenError, match="expected a Run or a run directory"):
        auxgen.label(42, np.zeros((1, 1, 8, 8), np.uint8), [0])
    with pytest.raises(AuxgenError):
        auxgen.export(tmp_path, tmp_path / "x.h5")


def test_label_of_a_run_without_generator(tmp_path):
    run = auxgen.train({**TINY, "epochs": 1, "method": "single"}, tmp_path / "single")
    with pytest.raises(AuxgenError, match="has no label generator"):
        auxgen.label(run, np.zeros((1, 1, 8, 8), np.uint8), [0])


def test_auxgen_export_stays_the_subpackage():
    import auxgen.export.labels as labels

    assert auxgen.export.compute_soft_labels is labels.compute_soft_labels and callable(auxgen.export)


# ------------------------------------------------------------------------------ resume to more epochs
def test_resume_with_more_epochs_continues_to_them(tmp_path, cli):
    out = tmp_path / "run"
    run = auxgen.train({**TINY, "epochs": 1}, out)
    first = run.metrics[0]
    code, _, err = cli("train", "--resume", out, "--epochs", "3", "-q")
    assert code == 0, err
    assert "now trains for 3 epochs (was 1)" in err and "schedule stretches" in err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and lines[0] == first
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    code, _, err = cli("train", "--resume", out, "--epochs", "2", "-q")  # fewer than finished
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "fewer than the 3 epochs" in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    # the API's resume does the same
    assert auxgen.resume(out, epochs=4).summary["epochs"] == 4


def test_resume_to_more_epochs_matches_the_longer_schedule_from_there(tmp_path):
    """Epoch 2 of a run stretched from 1 to 2 epochs uses the 2-epoch schedule's learning rate."""
    from auxgen.trainer import lr_at

    out = tmp_path / "run"
    auxgen.train({**TINY, "epochs": 1, "lr_schedule": "step"}, out)
    run = auxgen.resume(out, epochs=2)
    assert run.metrics[1]["lr"] == pytest.approx(lr_at(TINY["lr"], 2, 2, "step", 2))


# ------------------------------------------------------------------------------ interrupts
def test_interrupt_before_the_first_epoch_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    from auxgen import api, cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    monkeypatch.setattr(api, "_training", run)
    monkeypatch.setattr(sys, "argv", ["auxgen", "train", "--out", str(run)])
    cli._interrupted("terminated")
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "finished epochs are saved" not in err
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    cli._interrupted("terminated")
    err = capsys.readouterr().err
    assert "finished epochs are saved" in err and f"--resume {run}" in err


# ------------------------------------------------------------------------------ frictions
def test_psi_as_integer_or_list_in_a_toml_file(tmp_path):
    from auxgen.config import resolve_config

    f = tmp_path / "c.toml"
    f.write_text('dataset = "digits"\npsi = 3\n')
    assert resolve_config(f, {}).psi == "3"
    f.write_text('dataset = "digits"\npsi = [2, 3, 2, 3, 2, 3, 2, 3, 2, 3]\n')
    assert resolve_config(f, {}).psi == "2,3,2,3,2,3,2,3,2,3"
    f.write_text('dataset = "digits"\npsi = 0\n')
    with pytest.raises(AuxgenError, match="positive"):
        resolve_config(f, {})
    f.write_text('dataset = "digits"\npsi = [2, "x"]\n')
    with pytest.raises(AuxgenError, match="must be a string or null"):
        resolve_config(f, {})
    f.write_text('dataset = "digits"\npsi = true\n')
    with pytest.raises(AuxgenError, match="must be a string or null"):
        resolve_config(f, {})


def test_help_shows_no_bool_type_and_atol_has_its_default(cli):
    for command in ("train", "export", "verify", "report"):
        code, out, _ = cli(command, "--help")
        assert code == 0 and "<bool>" not in out, command
    code, out, _ = cli("verify", "--help")
    assert "1e-5" in " ".join(out.split()) and "tolerance ." not in out
    code, out, _ = cli("train", "--help")
    assert "class_names" in out.replace("\n", "").replace("│", "").replace(" ", "")


# ------------------------------------------------------------------------------ pipelines/ installable
def test_pipelines_install_with_the_package_and_import_without_auxgen(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("auxgen", "pipelines"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("auxgen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipelines/__init__.py" in names and "pipelines/numpy_reader.py" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, pipelines, pipelines.numpy_reader, pipelines._common; "
            "assert pipelines.__file__.startswith(sys.argv[1]), pipelines.__file__; "
            "assert not [m for m in sys.modules if m.startswith('auxgen')]")
    env = {**os.environ, "PYTHONPATH": str(wheel)}  # a wheel is importable as a zip: the installed files
    subprocess.run([sys.executable, "-c", code, str(wheel)], check=True, cwd=elsewhere, env=env)
