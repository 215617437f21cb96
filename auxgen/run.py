"""Reading a finished (or running) run directory back: config, data, models, checkpoint.

Used by export and verify, which must rebuild exactly what training built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auxgen.checkpoint import load_checkpoint, sha256_file
from auxgen.compose import build_models, load_data
from auxgen.config import TrainConfig, saved_run_options
from auxgen.data import Data
from auxgen.errors import AuxgenError, CheckpointError
from auxgen.hierarchy import Hierarchy
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.paths import one_line
from auxgen.rundir import RunDir
from auxgen.runtime import pick_device


@dataclass
class LoadedRun:
    """A run directory with one checkpoint loaded into eval-mode models on `device`."""

    run_dir: Path
    meta: dict[str, Any]          # config.json
    cfg: TrainConfig
    hier: Hierarchy
    device: torch.device
    model: MultiTaskNet
    generator: LabelGenerator | None
    checkpoint_path: Path
    checkpoint_sha256: str
    state: dict[str, Any]         # the checkpoint itself (epoch, history, test_acc, ...)
    config_sha256: str            # of the very bytes `meta` was parsed from

    def recorded_test_acc(self) -> float | None:
        """The test accuracy the run recorded for this checkpoint's epoch."""
        return self.state.get("test_acc")


def resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """`best`, `last` or a path to a checkpoint file."""
    if checkpoint in ("best", "last"):
        path = RunDir(run_dir).checkpoint(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{run_dir} has no {checkpoint} checkpoint ({path}); has it finished an epoch?")
        return path
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; use best, last or a .pt file")
    return path


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json, parsed."""
    return _read_run_config(Path(run_dir))[0]


def _read_run_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """config.json parsed, and the sha256 of the same bytes (read once, so the two always agree)."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise AuxgenError(f"{run_dir} is not an auxgen run directory (no config.json)")
    try:
        raw = path.read_bytes()
        meta = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise AuxgenError(f"{path} cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuxgenError(f"{path} is not valid UTF-8 JSON; the run directory is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("train"), dict) or not isinstance(meta.get("data"), dict):
        raise AuxgenError(f"{path} is not an auxgen run's config.json (no train/data records); the run directory "
                          f"is damaged")
    return meta, hashlib.sha256(raw).hexdigest()


def load_run(run_dir: str | Path, checkpoint: str = "last", device: str | None = None,
             data_root: str | None = None) -> LoadedRun:
    """Load a run's config and checkpoint; models come back in eval mode on the run's device choice."""
    run_dir = Path(run_dir)
    meta, config_sha = _read_run_config(run_dir)
    train_cfg = saved_run_options(meta["train"])
    if data_root is not None:
        train_cfg["data_root"] = data_root
    if device is not None:
        train_cfg["device"] = device
    cfg = TrainConfig.from_dict(train_cfg, where=str(RunDir(run_dir).config)).validate()
    try:  # psi may come from the data (a label tree), so the run's record of it is the reference
        hier = Hierarchy(tuple(meta["psi"]))
    except (KeyError, TypeError):
        raise AuxgenError(f"{run_dir / 'config.json'} holds no valid psi; the run directory is damaged") from None
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    if state.get("psi") != meta["psi"]:
        raise CheckpointError(f"checkpoint {path} has psi {state.get('psi')} but the run has {meta['psi']}")
    dev = pick_device(cfg.device)

    try:
        # the checkpoint holds the weights: a pretrained backbone is not fetched again
        model, gen = build_models(cfg, meta["data"]["image_shape"][0], hier, load_weights=False)
        model.load_state_dict(state["model"])
        if gen is not None:
            gen.load_state_dict(state["generator"])
    except (KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {RunDir(run_dir).config} ({one_line(e, 160)})") from None
    model.to(dev).eval()
    if gen is not None:
        gen.to(dev).eval()
    return LoadedRun(run_dir, meta, cfg, hier, dev, model, gen, path, sha256_file(path), state, config_sha)


def load_run_data(run: LoadedRun, check: bool = True) -> Data:
    """The run's dataset; with check=True a changed dataset (fingerprint) is an error."""
    data = load_data(run.cfg)
    if check and data.fingerprint() != run.meta["data"]["fingerprint"]:
        raise AuxgenError(f"the dataset at {run.cfg.data_root} differs from the one {run.run_dir} was "
                          f"trained on (fingerprint mismatch)")
    return data
