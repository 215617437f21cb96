"""Training progress: a rich live bar on a terminal, plain lines otherwise (logs, CI)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from auxgen.errors import AuxgenError

LOG_SECONDS = 30.0  # at most this long between plain progress lines (at the trainer's next host sync)


def plain_line(epoch: int, epochs: int, step: int, steps: int, stats: dict[str, float], seconds: float) -> str:
    """`epoch 3/30 step 40/120 loss 0.512 acc 81.2% 12.3 it/s`: one progress line for a log file."""
    parts = [f"epoch {epoch}/{epochs}", f"step {step}/{steps}"]
    for k, v in stats.items():
        parts.append(f"{k} {100 * v:.1f}%" if k == "acc" else f"{k} {v:.3f}")
    parts.append(f"{step / max(seconds, 1e-9):.1f} it/s")
    return " ".join(parts)


class TensorBoardLog:
    """The epoch metrics of metrics.jsonl as TensorBoard scalars in RUN/tensorboard/ (torch's SummaryWriter)."""

    def __init__(self, folder: Path) -> None:
        self.writer = tensorboard_writer_class()(log_dir=str(folder))

    def epoch(self, metrics: dict[str, Any]) -> None:
        step = metrics["epoch"]
        for name, value in metrics.items():
            if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.writer.close()


def tensorboard_writer_class() -> type:
    """torch.utils.tensorboard.SummaryWriter, or one line saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AuxgenError("--log tensorboard needs the tensorboard package: pip install tensorboard (or "
                          "pip install 'auxgen[tensorboard]')") from None
    return SummaryWriter


def metric_log(kind: str, run: Path | None) -> contextlib.AbstractContextManager[TensorBoardLog | None]:
    """Where --log sends the epoch metrics besides metrics.jsonl (None: nowhere, or a run that writes nothing)."""
    if kind == "tensorboard" and run is not None:
        return TensorBoardLog(run / "tensorboard")
    return contextlib.nullcontext()


class TrainProgress:
    """Shows epoch, step, running losses, accuracy, speed and ETA."""

    def __init__(self, epochs: int, enabled: bool = True, console: Console | None = None, log_every: int = 50,
                 log_seconds: float = LOG_SECONDS) -> None:
        self.console = console or Console(stderr=True)
        self.epochs, self.enabled = epochs, enabled
        self.live = enabled and self.console.is_terminal
        # not a terminal (a log file, CI): a plain line every log_every steps or log_seconds instead of the bar
        self.plain = enabled and not self.live
        self.log_every, self.log_seconds = log_every, log_seconds
        self._bar: Progress | None = None
        self._t0 = time.perf_counter()
        self._done = 0  # steps done in this session, for the whole-run ETA

    def __enter__(self) -> TrainProgress:
        if self.live:
            self._bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[of]}"),
                                 BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 TextColumn("epoch eta"), TimeRemainingColumn(), console=self.console)
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch_t0 = time.perf_counter()
        self._epoch, self._steps = epoch, steps
        self._done_before_epoch = self._done
        self._next_line, self._line_t = self.log_every, self._epoch_t0
        if self._bar is not None:
            self._task = self._bar.add_task("train", total=steps, epoch=epoch, of=self.epochs, stats="")

    def update(self, step: int, stats: dict[str, float]) -> None:
        self._done = self._done_before_epoch + step
        if self._bar is not None:
            now = time.perf_counter()
            speed = step / max(now - self._epoch_t0, 1e-9)
            left = (self.epochs - self._epoch) * self._steps + self._steps - step
            eta = left * (now - self._t0) / max(self._done, 1)
            text = "  ".join(f"{k} {v:.4f}" for k, v in stats.items()) + f"  {speed:.1f} it/s"
            text += f"  run eta {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
            self._bar.update(self._task, completed=step, stats=text)
        elif self.plain and step < self._steps:  # the epoch's last step is the epoch line's
            now = time.perf_counter()
            if step >= self._next_line or now - self._line_t >= self.log_seconds:
                print(plain_line(self._epoch, self.epochs, step, self._steps, stats, now - self._epoch_t0),
                      file=sys.stderr, flush=True)
                self._next_line, self._line_t = step + self.log_every, now

    def end_epoch(self, m: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
        if not self.enabled:
            return
        line = (f"epoch {m['epoch']}/{self.epochs}  loss {m['train_loss_pri']:.4f}  "
                f"train acc {m['train_acc']:.4f}  test acc {m['test_acc']:.4f}")
        if m.get("meta_loss_before") is not None:
            line += f"  meta {m['meta_loss_before']:.4f}->{m['meta_loss_after']:.4f}"
        if m.get("aux_usage_entropy") is not None:
            line += f"  usage H {m['aux_usage_entropy']:.3f}/{m['aux_usage_entropy_max']:.3f}"
        elapsed = time.perf_counter() - self._t0
        line += f"  {m['time_s']:.1f}s  ({m['steps'] / max(m['time_s'], 1e-9):.1f} it/s, elapsed {elapsed:.0f}s)"
        self.console.print(line, highlight=False) if self.live else print(line, file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)
