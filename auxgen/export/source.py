"""The run an export is computed from (and verify checks against), loaded once, damage as one-line errors."""

from __future__ import annotations

from pathlib import Path

from auxgen.errors import AuxgenError
from auxgen.paths import one_line
from auxgen.run import LoadedRun, load_run, read_run_config


def open_run(run_dir: str | Path, checkpoint: str = "last", device: str | None = None,
             data_root: str | None = None) -> LoadedRun:
    """`load_run`, with a foreign or damaged config.json or checkpoint as an AuxgenError, not a traceback."""
    try:
        run = load_run(run_dir, checkpoint, device=device, data_root=data_root)
    except RuntimeError as e:  # load_state_dict: weights of another architecture
        raise AuxgenError(f"checkpoint {checkpoint} does not fit the models of {run_dir} "
                          f"({_first_line(e)})") from None
    except UnicodeDecodeError:
        raise AuxgenError(f"{Path(run_dir) / 'config.json'} is not UTF-8 text; the run directory is damaged") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        # valid JSON / a loadable checkpoint, but not the structure auxgen writes
        raise AuxgenError(f"{run_dir}: config.json or checkpoint {checkpoint} is not what auxgen train writes "
                          f"({type(e).__name__}: {_first_line(e)}); is it an auxgen run?") from None
    if not isinstance(run.state, dict) or not isinstance(run.meta.get("data"), dict):
        raise AuxgenError(f"{run_dir}: config.json or checkpoint {checkpoint} is not what auxgen train writes")
    return run


def check_run_dir(run_dir: str | Path) -> None:
    """A run directory with a readable config.json holding a JSON object; else an AuxgenError."""
    try:
        meta = read_run_config(run_dir)
    except (ValueError, OSError) as e:  # not UTF-8 text, unreadable
        raise AuxgenError(f"{Path(run_dir) / 'config.json'} cannot be read ({type(e).__name__}); "
                          f"the run directory is damaged") from None
    if not isinstance(meta, dict):
        raise AuxgenError(f"{Path(run_dir) / 'config.json'} is not an auxgen run config (not a JSON object)")


def _first_line(e: BaseException) -> str:
    return one_line(e)
