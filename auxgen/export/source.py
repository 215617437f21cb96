"""The run an export is computed from (and verify checks against), loaded once, damage as one-line errors."""

from __future__ import annotations

from pathlib import Path

from auxgen.errors import AuxgenError
from auxgen.run import LoadedRun, load_run


def open_run(run_dir: str | Path, checkpoint: str = "best", device: str | None = None,
             data_root: str | None = None) -> LoadedRun:
    """`load_run`, with a foreign or damaged config.json or checkpoint as an AuxgenError, not a traceback."""
    try:
        run = load_run(run_dir, checkpoint, device=device, data_root=data_root)
    except RuntimeError as e:  # load_state_dict: weights of another architecture
        raise AuxgenError(f"checkpoint {checkpoint} does not fit the models of {run_dir} "
                          f"({_first_line(e)})") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        # valid JSON / a loadable checkpoint, but not the structure auxgen writes
        raise AuxgenError(f"{run_dir}: config.json or checkpoint {checkpoint} is not what auxgen train writes "
                          f"({type(e).__name__}: {_first_line(e)}); is it an auxgen run?") from None
    if not isinstance(run.state, dict) or not isinstance(run.meta.get("data"), dict):
        raise AuxgenError(f"{run_dir}: config.json or checkpoint {checkpoint} is not what auxgen train writes")
    return run


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__
