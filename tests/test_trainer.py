"""The training loop: run directory, metrics, resume, baselines, divergence."""

import json

import pytest
import torch
from conftest import tiny_config, write_cifar

from auxgen.checkpoint import load_checkpoint
from auxgen.errors import AuxgenError
from auxgen.rundir import RunDir
from auxgen.trainer import Diverged, lr_at, setup, train


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time_s")
    return rows


def test_run_directory_contents(tiny_run):
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["train"]["method"] == "maxl" and cfg["psi"] == [5] * 10 and cfg["num_aux"] == 50
    assert len(cfg["data"]["fingerprint"]) == 64 and cfg["torch_version"] == torch.__version__
    assert {"auxgen_version", "seed", "created"} <= cfg.keys()
    rows = _metrics(tiny_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for k in ("train_loss_pri", "train_acc", "meta_loss_before", "meta_loss_after", "test_acc",
                  "aux_usage_entropy", "aux_sample_entropy", "lr"):
            assert isinstance(r[k], float), k
        assert 0 < r["aux_usage_entropy"] <= r["aux_usage_entropy_max"] + 1e-6
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")  # weights_only=True
    assert state["epoch"] == 2 and state["test_acc"] == rows[-1]["test_acc"]
    best = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    assert best["test_acc"] == max(r["test_acc"] for r in rows)


def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_config(epochs=3)
    train(cfg, tmp_path / "full", show=False)

    def stop_after_first(m):
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", show=False, on_epoch_end=stop_after_first)
    assert len(_metrics(tmp_path / "cut")) == 1
    train(cfg, tmp_path / "cut", resume=True, show=False)
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    for part in ("model", "generator"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)


def test_seeded_runs_repeat_and_seeds_differ(tmp_path):
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path / "a", show=False)
    train(cfg, tmp_path / "b", show=False)
    train(tiny_config(epochs=1, seed=1), tmp_path / "c", show=False)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert _metrics(tmp_path / "a") != _metrics(tmp_path / "c")


@pytest.mark.parametrize("method,extra", [
    ("single", {}), ("random", {"psi": "2"}), ("maxl", {"meta_split": 0.2}), ("maxl", {"meta_order": 1}),
    ("maxl", {"gen_decay": "l1", "cosine_every": 3}), ("maxl", {"fused_lookahead": True}),
    ("maxl", {"gen_width": 4})])
def test_methods_and_variants_train(tmp_path, method, extra):
    summary = train(tiny_config(epochs=1, method=method, **extra), tmp_path / "r", show=False)
    row = _metrics(tmp_path / "r")[0]
    assert 0.0 <= summary["final_test_acc"] <= 1.0
    assert ("meta_loss_before" in row) == (method == "maxl")
    if "gen_width" in extra:  # the generator's own width, recorded and rebuilt by load_run
        from auxgen.run import load_run
        loaded = load_run(tmp_path / "r")
        assert loaded.generator.backbone[0].out_channels == 4 and loaded.model.backbone[0].out_channels == 8
    if "cosine_every" in extra:
        assert -1.0 <= row["grad_cosine"] <= 1.0
    if method == "random":  # one-hot labels: zero per-sample entropy
        assert row["aux_sample_entropy"] == 0.0


def test_meta_split_holds_out_data():
    run = setup(tiny_config(meta_split=0.25))
    assert len(run.meta_idx) == round(0.25 * len(run.data.train))
    assert len(set(run.meta_idx.tolist()) & set(run.train_idx.tolist())) == 0
    assert len(run.meta_idx) + len(run.train_idx) == len(run.data.train)


def test_random_labels_fixed_inside_true_block():
    run = setup(tiny_config(method="random", psi="3"))
    y = run.data.train.labels
    assert torch.equal(run.hier.block_id()[run.targets.labels], y)
    assert torch.equal(setup(tiny_config(method="random", psi="3")).targets.labels, run.targets.labels)


def test_human_labels_on_cifar100(tmp_path):
    root = write_cifar(tmp_path / "data", "cifar100", n_train=64, n_test=16)
    run = setup(tiny_config(dataset="cifar100", data_root=str(root), method="human", primary_level=3,
                            aux_level=10, batch_size=16))
    assert run.hier.psi == (5, 1, 4)
    assert torch.equal(run.hier.block_id()[run.targets.labels], run.data.train.labels)
    train(run.cfg, tmp_path / "h", show=False)
    with pytest.raises(AuxgenError, match="needs fine labels"):
        setup(tiny_config(method="human"))  # plain digits have no label tree


def test_schedule_halves_at_quarters():
    assert [lr_at(0.01, e, 200) for e in (1, 50, 51, 100, 101, 150, 151, 200)] == \
        [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025, 0.00125, 0.00125]
    assert [lr_at(1.0, e, 8) for e in range(1, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    train(tiny_config(epochs=1), out, show=False)
    good = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(Diverged, match=r"epoch 2, step \d+"):
        train(tiny_config(epochs=2, lr=1e12, gen_lr=1e12), out, resume=True, show=False)
    assert (out / "checkpoints" / "last.pt").read_bytes() == good


def test_out_dir_safety(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(AuxgenError, match="not empty"):
        RunDir(other).prepare(False)
    with pytest.raises(AuxgenError, match="holds no auxgen run"):
        RunDir(other).prepare(True)
    assert (other / "notes.txt").read_text() == "keep me"
    (other / "config.json").write_text("{}")  # a file of that name does not make a folder an auxgen run
    with pytest.raises(AuxgenError, match="holds no auxgen run"):
        RunDir(other).prepare(True)
    assert (other / "notes.txt").read_text() == "keep me" and (other / "config.json").read_text() == "{}"


def test_force_replaces_only_an_auxgen_run(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(epochs=1), out, show=False)
    (out / "mine.txt").write_text("keep")
    RunDir(out).prepare(True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_out_under_a_file_is_one_line_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(AuxgenError, match="is a file"):
        RunDir(tmp_path / "f" / "run").prepare(False)


def test_nan_without_any_checkpoint_names_none(tmp_path):
    with pytest.raises(Diverged, match="no checkpoint was written") as e:
        train(tiny_config(epochs=1, lr=1e12, gen_lr=1e12), tmp_path / "r", show=False)
    assert "last.pt" not in str(e.value)


def test_resume_without_last_checkpoint(tmp_path, capsys):
    cfg = tiny_config(epochs=1)
    out = tmp_path / "r"
    train(cfg, out, show=False)
    (out / "checkpoints" / "last.pt").unlink()
    with pytest.raises(AuxgenError, match="last.pt is missing"):  # finished epochs would be lost silently
        train(cfg, out, resume=True, show=False)
    (out / "metrics.jsonl").unlink()  # killed before the first epoch ended: start over, and say so
    train(cfg, out, resume=True, show=False)
    assert "starting from epoch 1" in capsys.readouterr().err


def test_resume_with_edited_config_is_one_line_error(tmp_path):
    cfg = tiny_config(epochs=1)
    out = tmp_path / "r"
    train(cfg, out, show=False)
    meta = json.loads((out / "config.json").read_text())
    meta["train"]["width"] = 16  # the checkpoint's tensors no longer fit
    (out / "config.json").write_text(json.dumps(meta))
    from auxgen.config import TrainConfig
    with pytest.raises(AuxgenError, match="does not fit"):
        train(TrainConfig.from_dict(meta["train"]), out, resume=True, show=False)


def test_digit_groups_are_a_label_tree():
    run = setup(tiny_config(method="human", primary_groups=5))
    d = run.data
    assert d.num_classes == 5 and d.fine_parent == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and run.hier.psi == (2,) * 5
    assert torch.equal(d.train.labels, d.train.fine // 2)
    # the human label of a digit is its place inside its group's block
    assert torch.equal(run.targets.labels, d.train.fine)
    assert setup(tiny_config(primary_groups=2)).hier.psi == (5, 5)  # maxl takes the tree's psi by default
    assert setup(tiny_config(primary_groups=2, psi="3")).hier.psi == (3, 3)


def test_frozen_soft_labels_with_views_train(tmp_path):
    """verify's --retrain path: soft labels per stored view, each step shows a view with its own label."""
    from auxgen.steps import TargetSource

    base = setup(tiny_config(method="single", psi="2", augment="on"))
    n, k = len(base.data.train), base.hier.num_aux
    views = torch.stack([torch.tensor([[base.data.pad, base.data.pad, 0], [0, 0, 1]])] * n)
    soft = torch.zeros(n, 2, k)
    soft[torch.arange(n), 0, base.hier.offsets[0]] = 1.0
    soft[torch.arange(n), 1, base.hier.offsets[0] + 1] = 1.0
    cfg = tiny_config(method="single", psi="2", augment="on", epochs=1)
    s = train(cfg, None, show=False, targets=TargetSource("soft", soft, views), return_run=True)
    assert s["run_dir"] is None and 0 <= s["final_test_acc"] <= 1
    assert s["run"].targets.views.shape == (n, 2, 3)


def test_alternate_schedule_trains_and_resumes_exactly(tmp_path):
    cfg = tiny_config(epochs=2, schedule="alternate")
    full = train(cfg, tmp_path / "a", show=False)
    assert full["epochs"] == 2
    train(tiny_config(epochs=1, schedule="alternate"), tmp_path / "b", show=False)
    train(cfg, tmp_path / "b", resume=True, show=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for k, v in a["generator"].items():
        assert torch.equal(v, b["generator"][k]), k


# ------------------------------------------------------------------------------ label diagnostics at the end
def test_nmi_and_neighbour_purity_are_their_definitions():
    from auxgen.label_stats import in_block_nmi, neighbour_purity, nmi

    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert nmi(a, a * 7 + 1) == pytest.approx(1.0)   # the same partition under other names
    assert nmi(a, torch.zeros(6)) == 0.0                # a constant tells nothing
    assert nmi(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    primary = torch.tensor([0, 0, 0, 0, 1, 1])
    hard, fine = torch.tensor([0, 0, 1, 1, 5, 6]), torch.tensor([3, 3, 4, 4, 8, 8])
    assert in_block_nmi(hard, fine, primary) == pytest.approx(4 / 6)  # block 0 exact (1), block 1 none (0)
    fine_all = torch.tensor([0, 0, 1, 1])
    nb = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 2]])
    # row 0: 1 of 2 share its class, row 1: 1 of 2, row 2: 1 of 2, row 3: both
    assert neighbour_purity(nb, fine_all, torch.arange(4)) == pytest.approx(5 / 8)
    assert neighbour_purity(nb, fine_all, torch.tensor([3])) == 1.0


def test_train_prints_and_stores_the_label_diagnostics(tmp_path, cli):
    code, out, err = cli("train", "--dataset", "digits", "--primary-groups", "2", "--backbone", "cnn", "--width", "8",
                         "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", tmp_path / "r")
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert 0.0 <= s["neighbour_purity"] <= 1.0 and 0.0 <= s["in_block_nmi"] <= 1.0
    assert s["best_on"] == "val_acc"  # 2 groups of digits: ~700 images a class, so a validation split by default
    for line in ("neighbour purity", "in-block NMI", "per-sample entropy in block", "usage inside each block"):
        assert line in out, out
    single = train(tiny_config(method="single", primary_groups=2, epochs=1), None, show=False)
    assert "in_block_nmi" not in single  # no auxiliary labels to judge
