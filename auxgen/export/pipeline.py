"""Overlapping label computation with writing: a writer thread fed by a bounded queue.

The generator runs in the calling thread (torch releases the GIL inside its kernels), the
sink's calls run in order in one background thread, and the bounded queue keeps memory flat
when the disk is slower than the model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Chunk:
    """Consecutive whole samples of one split, ready to write (numpy, on the CPU)."""

    split: str
    start: int               # index of the first sample in its split
    primary: np.ndarray      # int64 [b]
    soft: np.ndarray         # float32 [b, K], or [b, V, K] with views
    hard: np.ndarray         # int64 [b] / [b, V]
    entropy: np.ndarray      # float32 [b] / [b, V]

    def __len__(self) -> int:
        return len(self.primary)

    def head(self, n: int) -> Chunk:
        """The first n samples."""
        return Chunk(self.split, self.start, self.primary[:n], self.soft[:n], self.hard[:n], self.entropy[:n])


class SampleAssembler:
    """Turns batches of label rows (fixed batching) into chunks of whole samples from `start` on."""

    def __init__(self, split: str, primary: np.ndarray, views: int, start: int) -> None:
        self.split, self.primary, self.v, self.next = split, primary, max(views, 1), start
        self.views = views
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._row = start * self.v  # the next row a chunk needs

    def add(self, r0: int, soft: np.ndarray, hard: np.ndarray, entropy: np.ndarray) -> Iterator[Chunk]:
        skip = max(0, self._row - r0)  # rows before the resume point
        if skip >= len(soft):
            return
        self._pending.append((soft[skip:], hard[skip:], entropy[skip:]))
        self._pending_rows += len(soft) - skip
        self._row = r0 + len(soft)
        whole = self._pending_rows // self.v
        if whole == 0:
            return
        soft_all, hard_all, ent_all = (np.concatenate([p[i] for p in self._pending]) if len(self._pending) > 1
                                       else self._pending[0][i] for i in range(3))
        n_rows = whole * self.v
        rest = (soft_all[n_rows:], hard_all[n_rows:], ent_all[n_rows:])
        self._pending = [rest] if len(rest[0]) else []
        self._pending_rows = len(rest[0])
        a = self.next
        self.next += whole
        shape = (whole, self.v) if self.views else (whole,)
        yield Chunk(self.split, a, self.primary[a:a + whole], soft_all[:n_rows].reshape(*shape, -1),
                    hard_all[:n_rows].reshape(shape), ent_all[:n_rows].reshape(shape))


class BackgroundWriter:
    """Runs calls in order on one thread; the first error stops it and is re-raised to the producer."""

    def __init__(self, maxsize: int = 4) -> None:
        self._q: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auxgen-export-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self.error is not None or self._stop.is_set():
                continue  # keep draining so the producer never blocks on a dead writer
            fn, args = item
            try:
                fn(*args)
            except BaseException as e:  # re-raised in the producer's thread
                self.error = e

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue fn(*args); blocks while the queue is full, raises the writer's error if it failed."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._q.put((fn, args), timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for every queued call; re-raise the writer's error."""
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Drop queued calls and stop the thread (after an error or an interrupt in the producer)."""
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._q.put(None)
        self._thread.join()
