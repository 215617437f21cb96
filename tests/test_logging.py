"""Logging people already use: TensorBoard scalars (--log tensorboard) and plain progress lines in a log file."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import tiny_config

from auxgen.errors import AuxgenError
from auxgen.progress import TrainProgress, plain_line
from auxgen.trainer import train

LINE = re.compile(r"^epoch (\d+)/(\d+) step (\d+)/(\d+) loss \d+\.\d{3} acc \d+\.\d% \d+\.\d it/s$")


def test_plain_line_format():
    assert plain_line(3, 30, 40, 120, {"loss": 0.5123, "acc": 0.8123}, 40 / 12.3) == \
        "epoch 3/30 step 40/120 loss 0.512 acc 81.2% 12.3 it/s"


def test_a_redirected_run_prints_progress_lines_every_n_steps(tmp_path, capsys):
    # under pytest stderr is not a terminal: no live bar, plain lines instead
    train(tiny_config(epochs=2, log_every=10), tmp_path / "run", show=True)
    err = capsys.readouterr().err.splitlines()
    lines = [x for x in err if LINE.match(x)]
    steps = [(int(m[1]), int(m[3])) for m in map(LINE.match, lines)]
    n = int(LINE.match(lines[0])[4])
    want = [(e, s) for e in (1, 2) for s in range(10, n, 10)]
    assert steps == want, err
    assert any(x.startswith("epoch 2/2  loss") for x in err)  # the epoch lines stay


def test_progress_lines_follow_log_every_and_the_clock(capsys, monkeypatch):
    import auxgen.progress as progress

    readings = [0.0, 0.0, 1.0, 2.0, 40.0, 41.0, 42.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: readings.pop(0) if readings else 42.0)
    p = TrainProgress(1, enabled=True, log_every=50)
    assert p.plain and not p.live
    with p:
        p.start_epoch(1, 200)
        for step in (10, 20, 30, 40, 50):  # the clock reads 1, 2, 40, 41, 42
            p.update(step, {"loss": 1.0, "acc": 0.5})
    got = [int(LINE.match(x)[3]) for x in capsys.readouterr().err.splitlines() if LINE.match(x)]
    assert got == [30]  # 30 s passed at step 30; the next line is due 50 steps later
    quiet = TrainProgress(1, enabled=False)
    assert not quiet.plain


def test_log_every_must_be_positive():
    with pytest.raises(AuxgenError, match="--log-every must be at least 1"):
        tiny_config(log_every=0)
    with pytest.raises(AuxgenError, match="unknown log 'wandb'"):
        tiny_config(log="wandb")


def test_tensorboard_scalars_are_the_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_config(epochs=2, log="tensorboard"), out, show=False)
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    numeric = {k for k, v in history[0].items()
               if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {"test_acc", "train_loss_pri", "lr"} <= tags and tags == numeric
    for tag in ("test_acc", "train_loss_pri", "aux_usage_entropy"):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([m[tag] for m in history], rel=1e-6)


def test_no_tensorboard_folder_without_log(tiny_run):
    assert not (tiny_run / "tensorboard").exists()


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch, cli):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = cli("train", "--out", tmp_path / "run", "--dataset", "digits", "--backbone", "cnn", "--width",
                       "4", "--epochs", "1", "--device", "cpu", "--log", "tensorboard", "-q")
    assert code != 0 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install tensorboard" in lines[0], err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
