"""Atomic file writes and checkpoint I/O (loaded with weights_only=True: no code runs on load)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import signal
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from auxgen.errors import AuxgenError, CheckpointError
from auxgen.paths import one_line, regular_file_problem

# Run files (config, metrics, checkpoints) are private to their owner by default: checkpoints
# may embed data-derived statistics (batch-norm means of the training images, label usage), and
# a run directory often sits in a shared home or scratch space. Exports meant to be shared
# pass mode=0o644 explicitly.
RUN_FILE_MODE = 0o600

# what every auxgen checkpoint holds, whatever else a format version adds
CHECKPOINT_KEYS = ("format", "epoch", "model")


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def atomic_write(path: str | Path, write: Callable[[str], None], mode: int = RUN_FILE_MODE) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place.

    Readers see the old file or the new one, never half of one: a failed write (full disk,
    permissions, a crash) leaves `path` as it was and removes the temporary file. The file gets
    `mode` (RUN_FILE_MODE unless given). OS errors become one-line AuxgenErrors.
    """
    path = Path(path)
    held = _hold_sigterm()  # until the temporary file's name is known to the clean-up below
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except BaseException as e:
        _release(held)
        if isinstance(e, OSError):
            raise AuxgenError(f"cannot write {path}: {_reason(e)}") from None
        raise
    try:  # from here on the temporary file is removed whatever stops the write (a SIGTERM held above too)
        _release(held)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp's 0600 would do for run files, but exports pass their own mode
        _fsync(tmp)  # the rename must not reach the disk before the data (a crash would leave an empty file)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise AuxgenError(f"cannot write {path}: {_reason(e)}") from None
        raise


def _hold_sigterm() -> set[int] | None:
    """Hold SIGTERM back (the CLI turns it into an exception) in the main thread; the old mask, or None."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _release(held: set[int] | None) -> None:
    """Restore the mask: a SIGTERM that came meanwhile is raised now, where its clean-up is in place."""
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str, mode: int = RUN_FILE_MODE) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode)


def write_json_atomic(path: str | Path, data: Any, mode: int = RUN_FILE_MODE) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", mode)


def _torch_save(state: dict[str, Any], tmp: str) -> None:
    # through a Python file object: torch's own file writer reports a full disk as a cryptic
    # RuntimeError ("unexpected pos ..."), a Python file raises OSError(ENOSPC)
    with open(tmp, "wb") as f:
        torch.save(state, f)


def save_checkpoint(state: dict[str, Any], path: str | Path, mode: int = RUN_FILE_MODE) -> None:
    """Save a checkpoint dict atomically (the previous checkpoint stays intact if this fails)."""
    atomic_write(path, lambda tmp: _torch_save(state, tmp), mode)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an auxgen checkpoint on the CPU; a missing, truncated or foreign file is an AuxgenError
    that says which of those it is."""
    path = Path(path)
    problem = regular_file_problem(path)  # a FIFO would block the read forever
    if problem:
        raise CheckpointError(f"checkpoint {path} {problem}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({_reason(e)})") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was not written completely")
    # torch.save writes a zip archive; a cut-off one keeps the local header but loses the
    # central directory at the end
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated ({size} bytes, the end of the archive is missing); "
                          f"it was not written completely")
    if head != b"PK\x03\x04":  # auxgen checkpoints are always zip archives (torch.save's format)
        raise CheckpointError(f"checkpoint {path} is not an auxgen checkpoint (not the zip archive torch.save "
                          f"writes: a plain pickle or another kind of file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError):  # weights_only refuses anything but tensors and containers
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            detail = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"checkpoint {path} is a torch file but not an auxgen checkpoint: it holds objects "
                              f"a checkpoint never has{detail}") from None
        raise CheckpointError(f"checkpoint {path} cannot be read as a torch file ({type(e).__name__}: "
                          f"{one_line(e, 120)}); "
                          f"it is damaged or not a checkpoint") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        what = (f"a dict without {', '.join(k for k in CHECKPOINT_KEYS if k not in state)}"
                if isinstance(state, dict) else f"a {type(state).__name__}")
        raise CheckpointError(f"checkpoint {path} is a torch file but not an auxgen checkpoint (it holds {what})")
    return state


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
