"""auxgen verify: every check passes on a clean export and fails on its purpose-built fault."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_config, write_cifar

from auxgen.checkpoint import sha256_file
from auxgen.verify import read_export, retrain, verify


def tree_digest(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def status(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def reason(report, name: str) -> str:
    return next(c.reason for c in report.checks if c.name == name)


def reseal(h5: Path, edited: Path | None = None) -> None:
    """Rewrite the manifest's size and hash of an edited file of an HDF5 export (default: the .h5 itself),
    as a forger who knows the format would."""
    edited = edited or h5
    mpath = h5.with_name(h5.name + ".manifest.json")
    man = json.loads(mpath.read_text())
    for f in man["files"]:
        if f["path"] == edited.name:
            f["bytes"], f["sha256"] = edited.stat().st_size, sha256_file(edited)
    mpath.write_text(json.dumps(man))


def run_cli(*args: str) -> int:
    from auxgen import cli

    old = sys.argv
    sys.argv = ["auxgen", *args]
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with an HDF5 export and label-only + image shards."""
    from auxgen.export import export_labels

    root = tmp_path_factory.mktemp("verify")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    export_labels(run, root / "labels.h5", "hdf5")
    export_labels(run, root / "shards", "wds", shard_size="100KB")
    export_labels(run, root / "labelonly", "wds", images=False)
    return run, root


def copy_export(root: Path, name: str, dest: Path) -> Path:
    src = root / name
    if src.is_dir():
        shutil.copytree(src, dest / name)
    else:
        shutil.copy(src, dest / name)
        shutil.copy(src.with_name(src.name + ".manifest.json"), dest / (name + ".manifest.json"))
    return dest / name


def test_clean_exports_pass_and_nothing_is_written(exported):
    run, root = exported
    before = tree_digest(run, root)
    for name in ("labels.h5", "shards", "labelonly"):
        report = verify(run, root / name, sample=10_000)
        assert report.passed, report.to_dict()
        assert status(report) == {"evaluation": "pass", "integrity": "pass", "rederivation": "pass"}
    rd = next(c for c in report.checks if c.name == "rederivation")
    assert rd.figures["sampled"] == 1797 and rd.figures["max_abs_diff"] <= 1e-5
    assert tree_digest(run, root) == before


def test_cli_exit_codes_and_json(exported, tmp_path):
    run, root = exported
    out = tmp_path / "report.json"
    assert run_cli("verify", str(run), "--labels", str(root / "labels.h5"), "--json", str(out)) == 0
    data = json.loads(out.read_text())
    assert data["passed"] and [c["name"] for c in data["checks"]] == ["evaluation", "integrity", "rederivation"]
    assert run_cli("verify", str(tmp_path / "nope")) == 2
    assert run_cli("verify", str(run), "--labels", str(tmp_path / "missing.h5")) == 2
    assert run_cli("verify", str(run), "--labels", str(root / "labels.h5"), "--retrain", "1", "--seeds", "0") == 2
    assert run_cli("verify", str(run), "--json", str(run / "r.json")) == 2
    assert not (run / "r.json").exists()
    bad = copy_export(root, "labels.h5", tmp_path)
    bad.with_name(bad.name + ".manifest.json").unlink()
    assert run_cli("verify", str(run), "--labels", str(bad)) == 1


def test_flipped_byte_in_a_shard_fails_integrity(exported, tmp_path):
    run, root = exported
    shards = copy_export(root, "shards", tmp_path)
    tar = sorted(shards.glob("train-*.tar"))[1]
    raw = bytearray(tar.read_bytes())
    raw[700] ^= 0xFF  # inside the first member's data
    tar.write_bytes(bytes(raw))
    report = verify(run, shards)
    assert status(report)["integrity"] == "fail"
    assert f"{tar.name} sha256 differs" in reason(report, "integrity")


def test_truncated_hdf5_fails_without_a_traceback(exported, tmp_path):
    run, root = exported
    h5 = copy_export(root, "labels.h5", tmp_path)
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    report = verify(run, h5)
    assert status(report) == {"evaluation": "pass", "integrity": "fail", "rederivation": "fail"}
    assert "cannot be read as HDF5" in reason(report, "integrity")
    assert run_cli("verify", str(run), "--labels", str(h5)) == 1


def test_row_moved_outside_its_block_fails_integrity(exported, tmp_path):
    run, root = exported
    h5 = copy_export(root, "labels.h5", tmp_path)
    with h5py.File(h5, "r+") as f:
        row, p = f["train/aux_soft"][3], int(f["train/primary"][3])
        moved = np.roll(row, 5 if p < 9 else -5)  # psi is 5: the neighbouring block
        f["train/aux_soft"][3] = moved
    reseal(h5)
    report = verify(run, h5, sample=10_000)
    assert status(report)["integrity"] == "fail"
    assert "1 row(s) with mass outside their block" in reason(report, "integrity")
    assert status(report)["rederivation"] == "fail"


def test_missing_manifest_fails(exported, tmp_path):
    run, root = exported
    shards = copy_export(root, "labelonly", tmp_path)
    (shards / "manifest.json").unlink()
    report = verify(run, shards)
    assert status(report)["integrity"] == "fail" and "no manifest" in reason(report, "integrity")


def test_edited_labels_fail_rederivation_even_when_resealed(exported, tmp_path):
    run, root = exported
    h5 = copy_export(root, "labels.h5", tmp_path)
    with h5py.File(h5, "r+") as f:
        soft, primary = f["test/aux_soft"][()], f["test/primary"][()]
        lo = 5 * primary[0]
        soft[0, lo:lo + 5] = soft[0, lo:lo + 5][::-1]  # a valid-looking row: same block, sums to 1
        f["test/aux_soft"][()] = soft
        hard = soft.argmax(1)
        f["test/aux_hard"][()] = hard
    reseal(h5)
    report = verify(run, h5, sample=10_000)
    assert status(report)["integrity"] == "pass", reason(report, "integrity")
    assert status(report)["rederivation"] == "fail"
    assert "1 of 1797 sampled rows" in reason(report, "rederivation")


def test_labels_from_another_checkpoint_fail(exported, tmp_path):
    """Swap in a checkpoint whose generator differs: the hash check and the re-derivation catch it."""
    run0, root = exported
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    h5 = copy_export(root, "labels.h5", tmp_path)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for v in state["generator"].values():
        if v.is_floating_point():
            v.mul_(1.05)
    torch.save(state, run / "checkpoints" / "last.pt")
    report = verify(run, h5, sample=64)
    assert status(report) == {"evaluation": "pass", "integrity": "fail", "rederivation": "fail"}
    assert "labels of another checkpoint" in reason(report, "integrity")
    # a forger who also rewrites the recorded hashes is still caught by re-derivation
    new_sha = sha256_file(run / "checkpoints" / "last.pt")
    with h5py.File(h5, "r+") as f:
        f.attrs["checkpoint_sha256"] = new_sha
    reseal(h5)
    mpath = h5.with_name(h5.name + ".manifest.json")
    man = json.loads(mpath.read_text())
    man["checkpoint_sha256"] = new_sha
    mpath.write_text(json.dumps(man))
    report = verify(run, h5, sample=64)
    assert status(report)["integrity"] == "pass", reason(report, "integrity")
    assert status(report)["rederivation"] == "fail"


def test_changed_checkpoint_weights_fail_evaluation(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["model"]["primary.2.bias"] += torch.linspace(-3, 3, len(state["model"]["primary.2.bias"]))
    torch.save(state, run / "checkpoints" / "last.pt")
    report = verify(run)
    assert status(report) == {"evaluation": "fail"}
    assert "fingerprints match, so the checkpoint weights or the code changed" in reason(report, "evaluation")
    assert verify(run, tolerance=1.0).passed  # the tolerance option for other devices


def test_truncated_checkpoint_fails_not_crashes(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    ck = run / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    report = verify(run, exported[1] / "labels.h5")
    assert status(report) == {"evaluation": "fail", "integrity": "fail", "rederivation": "fail"}


def test_changed_test_set_fails_evaluation_and_names_it(tmp_path):
    from auxgen.trainer import train

    data = write_cifar(tmp_path / "data", "cifar10", n_train=60, n_test=20)
    run = tmp_path / "run"
    train(tiny_config(dataset="cifar10", data_root=str(data), epochs=1, batch_size=20, width=4), run, show=False)
    assert verify(run).passed
    write_cifar(tmp_path / "data", "cifar10", n_train=60, n_test=20, seed=1)  # new pixels and labels everywhere
    report = verify(run)
    assert status(report) == {"evaluation": "fail"}
    figs = report.checks[0].figures
    assert "test_fingerprint" in figs["changed_fingerprints"]
    assert "test_fingerprint" in reason(report, "evaluation")


def test_retrain_single_task_matches_the_trainer(tiny_run, tmp_path):
    """verify's retraining loop is the trainer's: its single-task run equals `auxgen train --method single`."""
    from auxgen.run import load_run, load_run_data
    from auxgen.trainer import train

    run = load_run(tiny_run)
    data = load_run_data(run)
    ours = retrain(run, data, torch.arange(len(data.train)), None, epochs=2, seed=0)
    ref = train(tiny_config(method="single"), tmp_path / "single_ref", show=False)
    assert ours["acc"] == ref["final_test_acc"]


def test_quality_check_reports_all_three_arms_with_verdicts(exported):
    run, root = exported
    report = verify(run, root / "labelonly", retrain_epochs=1, seeds=2)
    q = next(c for c in report.checks if c.name == "quality")
    f = q.figures
    assert {"acc_exported", "acc_single", "acc_random", "gain_vs_single", "gain_vs_random"} <= set(f)
    assert f["seeds"] == [0, 1] and all(len(v) == 2 for v in f["acc"].values())
    diffs = [a - b for a, b in zip(f["acc"]["exported"], f["acc"]["single"], strict=True)]
    assert f["gain_vs_single"] == pytest.approx(sum(diffs) / 2)
    assert set(f["verdicts"].values()) <= {"helps", "hurts", "no measurable effect"}
    # pass only when the labels beat random labels: anything else must not read as a success
    assert (q.status == "pass") == (f["verdicts"]["random"] == "helps" and f["verdicts"]["single"] != "hurts")
    # the frozen labels do change training (else the comparison would be vacuous)
    assert f["history"]["exported"] != f["history"]["single"]
    fail = verify(run, root / "labelonly", retrain_epochs=1, seeds=1, min_gain=1.0)
    assert status(fail)["quality"] == "fail"


def test_verdicts_on_constructed_cases():
    from auxgen.stats import mean_ci, paired_difference, verdict

    same = [0.9, 0.8, 0.85]
    assert verdict(*paired_difference(same, same)) == "no measurable effect"  # identical arms
    assert verdict(*paired_difference([0.91, 0.81, 0.86], same)) == "helps"    # +1 point on every seed
    assert verdict(*paired_difference(same, [0.91, 0.81, 0.86])) == "hurts"
    assert verdict(*paired_difference([0.95, 0.7, 0.9], same)) == "no measurable effect"  # noisy
    assert verdict(*paired_difference([0.95], [0.9])) == "no measurable effect"  # one seed: no interval
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(2.4841377, rel=1e-6)  # t(0.975, 2) * 1 / sqrt(3)


def test_read_export_sees_views_and_float16(exported, tmp_path):
    from auxgen.export import export_labels

    run, _ = exported
    out = tmp_path / "v.h5"
    export_labels(run, out, "hdf5", views=2, dtype="float16", split="test")
    ex = read_export(out)
    assert ex.splits["test"].aux_soft.shape == (359, 2, 50) and ex.splits["test"].aux_soft.dtype == np.float16
    report = verify(run, out, sample=100)
    assert report.passed, report.to_dict()


@pytest.fixture(scope="module")
def generator_export(exported, tmp_path_factory):
    """An HDF5 export with every generator format, and generator files of another run (other weights)."""
    from auxgen.export import export_labels
    from auxgen.export.generator_files import save_generator
    from auxgen.run import load_run

    run, _ = exported
    root = tmp_path_factory.mktemp("generators")
    export_labels(run, root / "g.h5", "hdf5", generator_formats="pt2,onnx,torchscript")
    other = load_run(run).generator
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    example = (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    for fmt in ("pt2", "onnx", "torchscript"):
        save_generator(other, root / f"other.generator.{fmt}", fmt, {}, example)
    return run, root


def test_exported_generator_files_are_rederived(generator_export):
    """Every generator file (.pt2, .onnx, TorchScript) must give the checkpoint generator's labels."""
    run, root = generator_export
    report = verify(run, root / "g.h5", sample=64)
    assert report.passed, report.to_dict()
    found = next(c for c in report.checks if c.name == "rederivation").figures["generator_files"]
    assert {g["format"] for g in found.values()} == {"pt2", "onnx", "torchscript"}
    assert found["g.h5.generator.pt2"]["max_abs_diff"] == 0.0  # bit-exact
    assert found["g.h5.generator.onnx"]["max_abs_diff"] <= 1e-5
    assert "onnx max diff" in reason(report, "rederivation")


@pytest.mark.parametrize("fmt, suffix", [("pt2", "pt2"), ("onnx", "onnx"), ("torchscript", "pt")])
def test_a_generator_file_of_another_run_fails(generator_export, tmp_path, fmt, suffix):
    """Swap one generator file for another run's, and forge the manifest's size and hash of it."""
    run, root = generator_export
    h5 = copy_export(root, "g.h5", tmp_path)
    for f in ("pt2", "onnx", "pt"):
        shutil.copy(root / f"g.h5.generator.{f}", tmp_path)
    gen_path = tmp_path / f"g.h5.generator.{suffix}"
    shutil.copy(root / f"other.generator.{fmt}", gen_path)
    report = verify(run, h5, sample=64)
    assert status(report)["integrity"] == "fail"  # the hash catches a plain swap
    reseal(h5, gen_path)
    report = verify(run, h5, sample=64)
    assert status(report)["integrity"] == "pass", reason(report, "integrity")
    assert status(report)["rederivation"] == "fail"
    assert f"exported {fmt} generator g.h5.generator.{suffix} disagrees" in reason(report, "rederivation")


def test_an_unlisted_generator_file_is_never_loaded(generator_export, tmp_path, monkeypatch):
    """A generator file beside the export that the manifest does not list (copied in later) fails integrity and
    is never loaded: a file nobody vouches for may run code (issue 16; it used to be loaded and checked)."""
    from auxgen.export import generator_files

    run, root = generator_export
    h5 = copy_export(root, "g.h5", tmp_path)
    mpath = tmp_path / "g.h5.manifest.json"
    man = json.loads(mpath.read_text())
    man["files"] = [f for f in man["files"] if f["path"] == "g.h5"]
    man["generators"], man["generator"] = [], None
    mpath.write_text(json.dumps(man))
    assert verify(run, h5, sample=32).passed
    shutil.copy(root / "other.generator.onnx", tmp_path / "g.h5.generator.onnx")
    loaded = []
    monkeypatch.setattr(generator_files, "read_generator_bytes", lambda *a, **k: loaded.append(a) or b"")
    report = verify(run, h5, sample=32)
    assert status(report)["integrity"] == "fail" and "g.h5.generator.onnx sits beside" in reason(report, "integrity")
    assert not loaded


def test_library_defaults_never_select_on_the_test_set(tiny_run):
    """Every library entry point uses the last checkpoint unless best (chosen on the test split) is asked for."""
    import inspect

    from auxgen import api
    from auxgen.export.options import ExportOptions
    from auxgen.export.source import open_run
    from auxgen.report.builder import build_report
    from auxgen.report.labels import labels_from_generator
    from auxgen.report.runs import read_run
    from auxgen.run import load_run
    from auxgen.rundir import RunDir

    for fn in (verify, build_report, read_run, labels_from_generator, open_run, load_run, api.export, api.Run.load):
        assert inspect.signature(fn).parameters["checkpoint"].default == "last", fn.__qualname__
    assert ExportOptions().checkpoint == "last"
    rd = RunDir(tiny_run)
    assert load_run(tiny_run).checkpoint_path == rd.checkpoint("last")
    assert load_run(tiny_run, "best").checkpoint_path == rd.checkpoint("best")  # still there when asked for
    assert verify(tiny_run, sample=8).checkpoint == "last"
