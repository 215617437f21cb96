"""A run directory as one component: its layout, its lock, its temporary names and the checks that come
before auxgen writes into it (a new run, --force over an earlier one, --resume).

    RUN/.auxgen-run          marker: written by auxgen alone; what --force needs before it deletes anything
    RUN/config.json          the options, versions, psi and data fingerprint
    RUN/metrics.jsonl        one line per finished epoch
    RUN/checkpoints/best.pt  the best validation accuracy so far (test accuracy without --val-split)
    RUN/checkpoints/last.pt  the last finished epoch (what --resume continues from)
    RUN/summary.json         written when the last epoch has finished

The same lock guards export outputs (`output_lock`), so two commands never write one output at once.
What training writes into the folder and reads back on --resume is here too: config.json's contents
(`run_metadata`), a checkpoint's state (`checkpoint_state`, `restore`), the record of finished epochs
(`Book`, `open_book`, `record_epoch`) and a k-means run's targets (`save_targets`, `load_targets`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import auxgen
from auxgen.checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json_atomic, write_text_atomic
from auxgen.errors import AuxgenError
from auxgen.paths import is_inside, one_line, refuse_under_file, regular_file_problem

if TYPE_CHECKING:
    from auxgen.config import TrainConfig
    from auxgen.steps import Training

CHECKPOINT_FORMAT = 1

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


# ------------------------------------------------------------------------------ what training writes and reads back
def run_metadata(tr: Training) -> dict[str, Any]:
    """What config.json records besides the options: versions, psi, data fingerprint."""
    d = tr.data
    return {
        "train": tr.cfg.to_dict(),
        "psi": list(tr.hier.psi),
        "num_primary": tr.hier.num_primary,
        "num_aux": tr.hier.num_aux,
        "seed": tr.cfg.seed,
        "auxgen_version": auxgen.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(tr.device),
        "data": {
            "name": d.name, "fingerprint": d.fingerprint(),
            "train_fingerprint": d.split_fingerprint("train"), "test_fingerprint": d.split_fingerprint("test"),
            "num_train": len(d.train), "num_test": len(d.test), "num_meta": len(tr.meta_idx),
            "num_val": len(tr.val_idx), "val_rows": tr.val_idx.tolist(),  # --val-split's rows of the train split
            "image_shape": list(d.image_shape), "class_names": d.class_names,
            "fine_names": d.fine_names, "augment": d.augment, "pad": d.pad, "flip": d.flip,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class Book:
    """What a run has recorded so far: its epochs' metrics, its best (accuracy, epoch), where it goes on
    (epoch and global step), and a resumed run's saved config.json (None for a new run)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, int] = (-1.0, 0)
    start_epoch: int = 1
    step: int = 0
    meta: dict[str, Any] | None = None


def write_run_files(tr: Training, rd: RunDir, meta: dict[str, Any]) -> None:
    """config.json, the marker, and a k-means run's targets (their computation trains a network: kept for
    export and resume)."""
    write_json_atomic(rd.config, meta)
    write_text_atomic(rd.marker, f"auxgen run directory (auxgen {auxgen.__version__})\n")
    if tr.cfg.method == "kmeans":
        save_targets(rd.targets, tr.targets.labels)


def checkpoint_state(tr: Training, book: Book, epoch: int, rngs: dict[str, torch.Generator]) -> dict[str, Any]:
    """A checkpoint: the networks, optimisers, every RNG and the record, all a resume needs."""
    rng = {k: g.get_state() for k, g in rngs.items()}
    rng["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    history = book.history
    return {
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "global_step": book.step,
        "psi": list(tr.hier.psi), "dataset": tr.data.name,
        "data_fingerprint": tr.data.fingerprint(),
        "model": tr.model.state_dict(),
        "generator": tr.generator.state_dict() if tr.generator is not None else None,
        "optimizer": tr.optimizer.state_dict(),
        "gen_optimizer": tr.gen_optimizer.state_dict() if tr.gen_optimizer is not None else None,
        "rng": rng, "history": history, "best_acc": book.best[0], "best_epoch": book.best[1],
        "test_acc": history[-1]["test_acc"] if history else None,
    }


def record_epoch(tr: Training, book: Book, metrics: dict[str, Any], rngs: dict[str, torch.Generator],
                 rd: RunDir | None, judged: str = "test_acc") -> None:
    """Add the epoch to the book (best: the highest `judged` accuracy) and, when the run is written, to its
    checkpoints and metrics.jsonl."""
    epoch = metrics["epoch"]
    book.history.append(metrics)
    improved = metrics[judged] > book.best[0]
    if improved:
        book.best = (metrics[judged], epoch)
    if rd is None:
        return
    state = checkpoint_state(tr, book, epoch, rngs)
    if improved:  # before last.pt, the commit point resume trusts: a kill between leaves both consistent
        save_checkpoint(state, rd.best)
    save_checkpoint(state, rd.last)
    write_text_atomic(rd.metrics, "".join(json.dumps(m) + "\n" for m in book.history))


def open_book(tr: Training, out: Path, write: bool, rngs: dict[str, torch.Generator]) -> Book:
    """A resumed run's record, its networks, optimisers and RNGs restored from checkpoints/last.pt."""
    rd = RunDir(out)
    saved = json.loads(rd.config.read_text())
    if saved["data"]["fingerprint"] != tr.data.fingerprint():
        raise AuxgenError(f"the dataset differs from the one {out} was trained on "
                          f"(fingerprint mismatch); resume needs the same data")
    if saved["data"].get("val_rows", []) != tr.val_idx.tolist():  # runs saved without a split record none
        raise AuxgenError(f"--resume {out}: the validation rows config.json records are not the ones --val-split "
                          f"{tr.cfg.val_split} holds out of this data now; resume needs the same split")
    book = restore(tr, rd, rngs)
    book.meta = saved
    resume_epochs(saved, tr.cfg, book.start_epoch - 1, rd, write)
    return book


def restore(tr: Training, rd: RunDir, rngs: dict[str, torch.Generator]) -> Book:
    """Load checkpoints/last.pt into the training; the record it holds, or a fresh one when no epoch finished."""
    out = rd.path
    if not rd.last.is_file():
        if rd.metrics.is_file() and rd.metrics.read_text().strip():
            raise AuxgenError(f"--resume {out}: metrics.jsonl records finished epochs but checkpoints/last.pt is "
                              f"missing; the run cannot continue (start a new one)")
        print(f"note: {out} has no checkpoints/last.pt (no epoch finished); starting from epoch 1", file=sys.stderr)
        return Book()
    state = load_checkpoint(rd.last)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt has checkpoint format {state.get('format')!r}; this "
                          f"auxgen (version {auxgen.__version__}) reads format {CHECKPOINT_FORMAT}")
    if state.get("psi") != list(tr.hier.psi):
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt has psi {state.get('psi')} but config.json gives "
                          f"{list(tr.hier.psi)}; config.json no longer matches the checkpoint")
    try:
        tr.model.load_state_dict(state["model"])
        tr.optimizer.load_state_dict(state["optimizer"])
        if tr.generator is not None:
            tr.generator.load_state_dict(state["generator"])
            tr.gen_optimizer.load_state_dict(state["gen_optimizer"])
        for k, g in rngs.items():
            g.set_state(state["rng"][k])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise AuxgenError(f"--resume {out}: checkpoints/last.pt does not fit the run's config.json "
                          f"({one_line(e, 160)}); was config.json edited?") from None
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Book(state["history"], (state["best_acc"], state["best_epoch"]), state["epoch"] + 1, state["global_step"])


def resume_epochs(meta: dict[str, Any], cfg: TrainConfig, done: int, rd: RunDir, write: bool) -> None:
    """--resume with another --epochs: at least the finished ones; config.json records the new count."""
    saved = meta["train"].get("epochs")
    if cfg.epochs == saved:
        return
    if cfg.epochs < done:
        raise AuxgenError(f"--epochs {cfg.epochs} is fewer than the {done} epochs {rd.path} has finished; give "
                          f"--epochs {done} or more")
    if write:
        print(f"note: {rd.path} now trains for {cfg.epochs} epochs (was {saved}); the learning-rate schedule "
              f"stretches to {cfg.epochs} epochs from epoch {done + 1} on (finished epochs keep theirs)",
              file=sys.stderr)
        if rd.summary.is_file():  # the run is no longer finished until its new last epoch is
            rd.summary.unlink()
    meta["train"]["epochs"] = cfg.epochs


def save_targets(path: Path, labels: torch.Tensor) -> None:
    """The training split's hard targets [N] as an int64 .npy file (written atomically)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the temporary name
            np.save(f, labels.cpu().numpy().astype(np.int64), allow_pickle=False)

    atomic_write(path, write)


def load_targets(rd: RunDir, primary: torch.Tensor, block_id: torch.Tensor) -> torch.Tensor | None:
    """A k-means run's saved targets.npy [N] for --resume (None when the run has none), checked to be one int64
    label per training row, each inside its row's primary block; read without pickles."""
    import numpy as np

    path = rd.targets
    if not os.path.lexists(path):
        return None
    problem = "is a link (auxgen writes a file)" if path.is_symlink() else regular_file_problem(path)
    if problem:
        raise AuxgenError(f"--resume {rd.path}: {path} {problem}; refusing to read it")
    try:
        hard = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise AuxgenError(f"--resume {rd.path}: {path} is not a numpy array auxgen wrote ({one_line(e, 120)})"
                          ) from None
    n, k = len(primary), len(block_id)
    ok = isinstance(hard, np.ndarray) and hard.dtype == np.int64 and hard.shape == (n,)
    ok = ok and (not n or (hard.min() >= 0 and hard.max() < k))
    if not ok or not torch.equal(block_id[torch.from_numpy(hard)], primary):
        raise AuxgenError(f"--resume {rd.path}: {path} is not the run's k-means targets ({n} int64 labels, each "
                          f"in its row's primary block of the {k} auxiliary classes); start a new run")
    return torch.from_numpy(hard)
