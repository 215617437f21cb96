"""A run directory as one component: its layout, its lock, its temporary names and the checks that come
before auxgen writes into it (a new run, --force over an earlier one, --resume).

    RUN/.auxgen-run          marker: written by auxgen alone; what --force needs before it deletes anything
    RUN/config.json          the options, versions, psi and data fingerprint
    RUN/metrics.jsonl        one line per finished epoch
    RUN/checkpoints/best.pt  the best test accuracy so far
    RUN/checkpoints/last.pt  the last finished epoch (what --resume continues from)
    RUN/summary.json         written when the last epoch has finished

The same lock guards export outputs (`output_lock`), so two commands never write one output at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from auxgen.errors import AuxgenError
from auxgen.paths import is_inside, refuse_under_file

RUN_MARKER = ".auxgen-run"
CHECKPOINTS = "checkpoints"
TOP_FILES = (RUN_MARKER, "config.json", "metrics.jsonl", "summary.json",  # auxgen's own files at the top
             "targets.npy")
CHECKPOINT_FILES = ("best.pt", "last.pt")                                  # and in checkpoints/
RUN_FILES = (*TOP_FILES, CHECKPOINTS)
TEMP_FILE = re.compile(r"\.[^/]+\.[A-Za-z0-9_]+\.tmp")  # atomic_write's temporary names: .NAME.RANDOM.tmp
# the temporary names of auxgen's own run files only: a user's `.x.abc.tmp` is not auxgen's to delete
_OWN_TEMP = re.compile(r"\.(" + "|".join(re.escape(n) for n in (*TOP_FILES, *CHECKPOINT_FILES))
                       + r")\.[A-Za-z0-9_]+\.tmp")


class RunDir:
    """The paths of one run directory and the checks before writing into it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.marker = self.path / RUN_MARKER
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.targets = self.path / "targets.npy"  # --method kmeans: the hard targets it trained on, for export
        self.checkpoints = self.path / CHECKPOINTS
        self.best = self.checkpoints / "best.pt"
        self.last = self.checkpoints / "last.pt"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def checkpoint(self, name: str) -> Path:
        """checkpoints/NAME.pt for `best` or `last`."""
        return self.checkpoints / f"{name}.pt"

    @property
    def is_run(self) -> bool:
        """Whether the folder holds an auxgen run: the marker file only auxgen writes."""
        return self.marker.is_file()

    @property
    def finished(self) -> bool:
        """summary.json is written after the last epoch only."""
        return self.summary.is_file()

    # ------------------------------------------------------------------ a new run (--out, --force)
    def prepare(self, force: bool, flag: str = "--out") -> None:
        """Make the folder ready for a new run: empty, or (with --force) an earlier run whose files go.

        Only auxgen's own files are deleted, by name, and only after every one of them was checked,
        so a refusal leaves the folder exactly as it was; a user's files (in checkpoints/ too) stay.
        """
        refuse_under_file(self.path, flag)
        self.remove_stale_temp_files()
        if self.path.is_dir() and any(self.path.iterdir()):
            if not force:
                raise AuxgenError(f"{flag} {self.path} is not empty; pass --resume to continue that run or "
                                  f"--force to replace it")
            if not self.is_run:
                raise AuxgenError(f"{flag} {self.path} is not empty and holds no auxgen run (no {RUN_MARKER} "
                                  f"file); refusing to delete its files even with --force")
            doomed = self._own_files(flag)
            for p in doomed:
                p.unlink()
            with contextlib.suppress(OSError):  # kept when it holds the user's own files
                self.checkpoints.rmdir()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuxgenError(f"{flag} {self.path} cannot be created ({e.strerror})") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise AuxgenError(f"{flag} {self.path} is not writable")

    def _own_files(self, flag: str) -> list[Path]:
        """auxgen's files in the run, each checked to be a plain file (checkpoints/ a real folder)."""
        found = [self.path / n for n in TOP_FILES]
        ck = self.checkpoints
        if ck.is_symlink() or (ck.exists() and not ck.is_dir()):
            raise AuxgenError(f"{flag} {self.path}: {ck} is not a folder auxgen made (a link or a file); "
                              f"nothing was deleted: move it away first")
        if ck.is_dir():
            found += [ck / n for n in CHECKPOINT_FILES]
        present = [p for p in found if os.path.lexists(p)]
        for p in present:
            if not stat.S_ISREG(os.lstat(p).st_mode):
                raise AuxgenError(f"{flag} {self.path}: {p} is not a file auxgen wrote (a folder, link or "
                                  f"device); nothing was deleted: move it away first")
        if not os.access(self.path, os.W_OK | os.X_OK) or (ck.is_dir() and not os.access(ck, os.W_OK | os.X_OK)):
            raise AuxgenError(f"{flag} {self.path}: its files cannot be deleted (not writable); nothing was deleted")
        return present

    def refuse_inputs_inside(self, inputs: dict[str, str | None]) -> None:
        """A new run must not read what preparing this folder deletes (with --force: auxgen's files and
        checkpoints/), nor the folder itself: it would delete its own input and then fail on it.

        `inputs` maps a flag to the file or folder it names (None: not given); checked before anything goes.
        """
        doomed = [self.path / n for n in TOP_FILES] + [self.checkpoints]
        for flag, value in inputs.items():
            if not value:
                continue
            if is_inside(self.path, Path(value)) and is_inside(Path(value), self.path):  # the same folder
                raise AuxgenError(f"{flag} {value} is the --out folder this run writes (and --force empties); "
                                  f"choose another --out")
            hit = next((d for d in doomed if is_inside(Path(value), d)), None)
            if hit is not None:
                raise AuxgenError(f"{flag} {value} is {hit}, which a new run in --out {self.path} replaces; "
                                  f"nothing was deleted: choose another --out or move the file first")

    def remove_if_empty(self) -> None:
        """Remove the folder when nothing was written into it (a run that failed before its first file)."""
        with contextlib.suppress(OSError):
            if self.path.is_dir() and not self.path.is_symlink() and not any(self.path.iterdir()):
                self.path.rmdir()

    def remove_stale_temp_files(self) -> None:
        """Temporary files a killed run left mid-write (a checkpoint's can be hundreds of MB).

        Only auxgen's own temporary names; called with the run locked or before it exists.
        """
        for d in (self.path, self.checkpoints):
            if d.is_dir() and not d.is_symlink():
                for f in d.iterdir():
                    if _OWN_TEMP.fullmatch(f.name) and f.is_file() and not f.is_symlink():
                        with contextlib.suppress(OSError):
                            f.unlink()

    # ------------------------------------------------------------------ --resume
    def check_resumable(self, flag: str = "--resume") -> None:
        """The saved config carries what resume compares against, and the folders can be written."""
        if not self.config.is_file():
            raise AuxgenError(f"{flag} {self.path}: no config.json there; is it an auxgen run directory?")
        try:
            saved = json.loads(self.config.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            raise AuxgenError(f"{flag} {self.path}: config.json is not valid UTF-8 JSON; the run is damaged") from None
        data = saved.get("data") if isinstance(saved, dict) else None
        if not isinstance(saved.get("train"), dict) or not isinstance(data, dict) or "fingerprint" not in data:
            raise AuxgenError(f"{flag} {self.path}: config.json is not a run's configuration (it lacks the train "
                              f"options or the data fingerprint); was it replaced by a hand-written config?")
        for d in (self.path, self.checkpoints):
            if d.is_dir() and not os.access(d, os.W_OK | os.X_OK):
                raise AuxgenError(f"{flag} {self.path}: {d} is not writable")

    def note_finished(self) -> None:
        """What --resume of a run that had nothing left to train tells the user."""
        print(f"note: {self.path} had already finished all its epochs (it has a summary.json); nothing was "
              f"trained, the summary is the finished run's", file=sys.stderr)

    # ------------------------------------------------------------------ the lock
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while training into the run: a second process is refused."""
        return lock_dir(self.path, f"another auxgen process is training into {self.path}; wait for it or stop "
                                   f"it first")


@contextlib.contextmanager
def lock_dir(folder: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive flock(2) on `folder` itself; AuxgenError(busy) when another process holds it.

    No lock file is left behind, and the kernel releases the lock when the process dies (kill -9).
    """
    try:
        import fcntl  # noqa: F401  (only whether it exists)
    except ImportError:  # Windows: no flock; run unlocked
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise AuxgenError(f"cannot open {folder} ({e.strerror})") from None
    try:
        _flock(fd, busy)
        yield
    finally:
        os.close(fd)


def _flock(fd: int, busy: str) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuxgenError(busy) from None
    except OSError:  # a file system without flock (some network mounts): run unlocked
        pass


@contextlib.contextmanager
def output_lock(out: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on an output that may not exist yet (an HDF5 file, a shard folder).

    The lock is a file `.NAME.lock` beside the output, removed on the way out. After locking, the
    name must still be the file that was locked: otherwise a process that just released and removed
    it would let two holders in at once.
    """
    try:
        import fcntl  # noqa: F401
    except ImportError:
        yield
        return
    lock = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # no folder can hold the output (a file on the way, no permission): the command's
        yield        # own checks say so in their words, and nothing can be written to race over
        return
    try:
        _flock(fd, busy)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except OSError:
            same = False
        if not same:
            raise AuxgenError(busy)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(fd)
