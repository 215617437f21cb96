"""Path rules every command shares: one line of an exception, outputs that must not land under a file or
inside an input, files that must be regular, and paths read from a file that must stay in their folder."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from auxgen.errors import AuxgenError


def one_line(exc: BaseException, limit: int = 200, whole: bool = False) -> str:
    """An exception's message as one line of at most `limit` characters (its type name when it has none).

    The first line by default (libraries append context and tracebacks below it); whole=True keeps
    every line, joined (parsers put the position on the next line).
    """
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = text.split() if whole else text.strip().splitlines()[:1]
    return (" ".join(lines) if whole else "".join(lines))[:limit] or type(exc).__name__


def refuse_under_file(path: Path, flag: str) -> None:
    """An output folder cannot be created below an existing file: say which file."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise AuxgenError(f"{flag} {path}: {parent} is a file, not a folder")
            return


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (symbolic links followed)."""
    target, root = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return target == root or root in target.parents


def refuse_inside(path: Path, roots: Iterable[Path | str | None], flag: str, what: str = "", why: str = "") -> None:
    """Refuse an output that is, or lies inside, one of the inputs `roots` (None entries are skipped).

    The message reads `FLAG PATH is inside WHAT ROOT; WHY; choose a path outside it`.
    """
    for root in roots:
        if root is not None and str(root) and is_inside(path, Path(root)):
            where = f"{what} {root}" if what else str(root)
            raise AuxgenError(f"{flag} {path} is inside {where}{'; ' + why if why else ''}; choose a path outside it")


def regular_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file (missing, a folder, a FIFO or device that would block), or None.

    A FIFO or a device would hang a reader forever (or feed it endless bytes), so only regular files pass.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device); refusing to read it"
    return None


def check_regular_file(path: Path, flag: str) -> None:
    """AuxgenError unless `path` is a regular file."""
    problem = regular_file_problem(Path(path))
    if problem:
        raise AuxgenError(f"{flag} {path} {problem}")


def confined(base: Path, rel: object) -> Path | None:
    """`base / rel` when `rel` (read from a file) is a relative path that stays inside `base`, else None.

    A manifest written by someone else must not make a reader open a file outside its folder.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel or Path(rel).is_absolute():
        return None
    if any(part in ("..", "") for part in rel.split("/")):
        return None
    target = (base / rel).resolve()
    return base / rel if base.resolve() in target.parents else None
