"""Issue 25, training, config and verify --json: what train reads is never what it deletes, --features-from
is checked up front (method, channels), verify --json replaces only its own reports, two trainings in
threads of one process give the same checkpoint, and --weights files are refused in words."""

from __future__ import annotations

import json
import pickle
import shutil
import threading

import pytest
import torch
from conftest import tiny_config, write_imagefolder

from auxgen.config import TrainConfig, resolve_config, saved_run_options
from auxgen.errors import AuxgenError
from auxgen.models import MultiTaskNet
from auxgen.rundir import RunDir

TINY = ("--dataset", "digits", "--backbone", "cnn", "--width", "8", "--epochs", "1", "--batch-size", "64",
        "--device", "cpu", "--quiet")


def _files(folder):
    return sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


# 1. nothing train reads is what --force removes ------------------------------------------------------------


def test_features_from_the_run_force_replaces_is_refused_and_kept(run_copy, cli):
    before = _files(run_copy)
    code, _, err = cli("train", *TINY, "--method", "kmeans", "--features-from", run_copy, "--out", run_copy,
                       "--force")
    assert code == 2 and "--features-from" in err and "is the --out folder" in err
    assert len(err.strip().splitlines()) == 1
    assert _files(run_copy) == before


@pytest.mark.parametrize("flag, name", [("--psi-file", "config.json"), ("--psi-file", "checkpoints/last.pt"),
                                        ("--data-root", "checkpoints")])
def test_an_input_among_the_files_force_deletes_is_refused(run_copy, cli, flag, name):
    before = _files(run_copy)
    dataset = ("--dataset", "cifar10") if flag == "--data-root" else ()
    code, _, err = cli("train", *TINY, *dataset, flag, run_copy / name, "--out", run_copy, "--force")
    assert code == 2 and f"{flag} {run_copy / name} is" in err and "nothing was deleted" in err, err
    assert _files(run_copy) == before


def test_a_users_file_kept_by_force_may_still_be_read(run_copy, cli):
    (run_copy / "psi.json").write_text("[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]")
    code, _, err = cli("train", *TINY, "--psi-file", run_copy / "psi.json", "--out", run_copy, "--force")
    assert code == 0, err
    assert json.loads((run_copy / "config.json").read_text())["psi"] == [2] * 10


def test_resume_with_force_deletes_nothing_it_continues_from(run_copy, cli):
    last = (run_copy / "checkpoints" / "last.pt").read_bytes()
    code, _, err = cli("train", "--resume", run_copy, "--force", "--quiet")
    assert code == 0, err
    assert (run_copy / "checkpoints" / "last.pt").read_bytes() == last and RunDir(run_copy).is_run


def test_inputs_inside_checks_by_resolved_path(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(AuxgenError, match="is the --out folder"):
        RunDir(out).refuse_inputs_inside({"--features-from": str(tmp_path / "link")})
    RunDir(out).refuse_inputs_inside({"--features-from": str(tmp_path / "other"), "--weights": None})


# 2. --features-from only with --method kmeans ------------------------------------------------------------


@pytest.mark.parametrize("method", ["maxl", "single", "random"])
def test_features_from_with_another_method_is_refused(method, tmp_path):
    with pytest.raises(AuxgenError, match=f"--method {method} would ignore it") as e:
        resolve_config(None, {"method": method, "features_from": str(tmp_path)})
    assert "\n" not in str(e.value)
    assert resolve_config(None, {"method": "kmeans", "features_from": str(tmp_path)}).features_from


def test_a_saved_run_that_recorded_an_ignored_features_from_still_loads():
    saved = saved_run_options({"method": "maxl", "features_from": "old"})
    assert "features_from" not in saved
    TrainConfig.from_dict(saved).validate()
    assert saved_run_options({"method": "kmeans", "features_from": "r"})["features_from"] == "r"


# 3. --features-from a run of other images: refused before the output folder exists -------------------------


def test_features_from_a_greyscale_run_for_rgb_data_leaves_nothing(tiny_run, tmp_path, cli):
    data = write_imagefolder(tmp_path / "img", per_class=24)
    out = tmp_path / "new"
    code, _, err = cli("train", *TINY, "--dataset", "imagefolder", "--data-root", data, "--image-size", "8",
                       "--batch-size", "8", "--method", "kmeans", "--features-from", tiny_run, "--out", out)
    assert code == 2 and "was trained on images of shape [1, 8, 8]" in err and "[3, 8, 8]" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_features_from_a_folder_that_is_no_run_is_one_line(tmp_path, cli):
    code, _, err = cli("train", *TINY, "--method", "kmeans", "--features-from", tmp_path / "nope",
                       "--out", tmp_path / "new")
    assert code == 2 and "--features-from" in err and "not an auxgen run directory" in err, err
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_before_its_first_file_leaves_no_folder(tmp_path, monkeypatch):
    import auxgen
    import auxgen.trainer

    def fail(*a, **k):
        raise AuxgenError("setup failed")

    monkeypatch.setattr(auxgen.trainer, "setup", fail)
    with pytest.raises(AuxgenError, match="setup failed"):
        auxgen.train(tiny_config(epochs=1).to_dict(), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_kmeans_from_a_compatible_run_still_trains(tiny_run, tmp_path):
    import auxgen

    run = auxgen.train(tiny_config(method="kmeans", epochs=1, features_from=str(tiny_run)).to_dict(),
                       tmp_path / "km")
    assert RunDir(run.path).targets.is_file() and run.summary["method"] == "kmeans"


# 4. verify --json replaces only an earlier verify report -------------------------------------------------


def test_verify_json_refuses_a_users_file_and_replaces_its_own_report(tiny_run, tmp_path, cli):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, _, err = cli("verify", tiny_run, "--json", notes)
    assert code == 2 and "is not an earlier verify report" in err and len(err.strip().splitlines()) == 1
    assert notes.read_text() == "my notes\n"
    fake = tmp_path / "fake.json"  # JSON, but someone else's
    fake.write_text('{"passed": true}')
    assert cli("verify", tiny_run, "--json", fake)[0] == 2 and fake.read_text() == '{"passed": true}'
    report = tmp_path / "report.json"
    assert cli("verify", tiny_run, "--json", report)[0] == 0
    first = json.loads(report.read_text())
    assert cli("verify", tiny_run, "--json", report)[0] == 0  # its own report: replaced
    assert json.loads(report.read_text()) == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_verify_json_refuses_a_link_even_to_a_report(tiny_run, tmp_path, cli):
    report = tmp_path / "report.json"
    assert cli("verify", tiny_run, "--json", report)[0] == 0
    (tmp_path / "link.json").symlink_to(report)
    assert cli("verify", tiny_run, "--json", tmp_path / "link.json")[0] == 2
    assert (tmp_path / "link.json").is_symlink()


# 5. two trainings in threads of one process ------------------------------------------------------------------


def test_two_trainings_in_threads_give_the_same_checkpoint(tmp_path, monkeypatch):
    import auxgen
    import auxgen.trainer

    real = auxgen.trainer.build_models

    def slow_build(*a, **k):  # widen the window between a run's seeding and its initialisation
        threading.Event().wait(0.3)
        return real(*a, **k)

    monkeypatch.setattr(auxgen.trainer, "build_models", slow_build)
    config, errors = tiny_config(epochs=1).to_dict(), []

    def one(name):
        try:
            auxgen.train(config, tmp_path / name)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=True) for n in ("a", "b"))
    for part in ("model", "generator"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"


# 6. --weights files refused in words --------------------------------------------------------------------------

TV = "torchvision:resnet18"


class _Evil:
    def __reduce__(self):
        return (print, ("ran",))


def _refusal(path) -> str:
    with pytest.raises(AuxgenError) as e:
        MultiTaskNet(TV, 3, 2, 4, weights=str(path))
    text = str(e.value)
    assert "\n" not in text and "\x1b" not in text and "weights_only" not in text
    return text


def test_a_weights_file_carrying_code_names_the_refused_global(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    text = _refusal(path)
    assert "names the Python global print" in text and "save `model.state_dict()`" in text


def test_a_whole_pickled_model_says_to_save_its_state_dict(tmp_path):
    import torchvision

    path = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18(), path)
    text = _refusal(path)
    assert "torchvision.models.resnet.ResNet" in text and "save `model.state_dict()`" in text


def test_a_weights_file_with_nan_names_the_tensor(tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["layer3.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    text = _refusal(path)
    assert "tensor layer2.0.conv1.weight holds NaN or infinite values" in text and "--lr" not in text
