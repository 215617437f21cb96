"""The Python API: train, export and label from Python; the `auxgen` command's recipes are thin layers over it.

    import auxgen

    run = auxgen.train({"dataset": "digits", "backbone": "cnn", "epochs": 2}, "runs/digits")
    auxgen.export(run, "labels/digits.h5")
    soft = auxgen.label(run, images_uint8, primary)   # float32 [N, K], as the export computes them

Options are TrainConfig's fields (the `auxgen train` flags with underscores), validated exactly as
the command line validates them; bad input is an AuxgenError with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxgen.config import TrainConfig, resolve_config, saved_run_options
from auxgen.errors import AuxgenError
from auxgen.rundir import RunDir

if TYPE_CHECKING:  # torch and numpy load only when a function runs: `import auxgen` stays light
    import numpy as np
    import torch

    from auxgen.models import LabelGenerator, MultiTaskNet
    from auxgen.run import LoadedRun

__all__ = ["Run", "export", "label", "open_run", "train"]


@dataclass(frozen=True)
class Run:
    """A run directory written by `train`: its path, its summary, and its networks loaded on first use."""

    path: Path
    summary: dict[str, Any] | None = None  # summary.json (None while the run has not finished)
    _loaded: dict[tuple[str, str | None], LoadedRun] = field(default_factory=dict, repr=False, compare=False)

    def load(self, checkpoint: str = "last", device: str | None = None) -> LoadedRun:
        """The run with one checkpoint (last, best or a .pt file; best is selected on the test set) in eval-mode
        networks; loaded once, then kept."""
        key = (checkpoint, device)
        if key not in self._loaded:
            from auxgen.run import load_run

            self._loaded[key] = load_run(self.path, checkpoint, device)
        return self._loaded[key]

    @property
    def config(self) -> TrainConfig:
        """The options the run was trained with (its config.json)."""
        from auxgen.run import read_run_config

        options = saved_run_options(read_run_config(self.path)["train"])
        return TrainConfig.from_dict(options, where=str(RunDir(self.path).config))

    @property
    def generator(self) -> LabelGenerator:
        """The label generator of the last checkpoint (an AuxgenError for runs of methods without one)."""
        gen = self.load().generator
        if gen is None:
            raise AuxgenError(f"{self.path} was trained with --method {self.load().cfg.method}: it has no label "
                              f"generator (only --method maxl learns one)")
        return gen

    @property
    def model(self) -> MultiTaskNet:
        """The multi-task network of the last checkpoint."""
        return self.load().model

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one dict per finished epoch."""
        path = RunDir(self.path).metrics
        if not path.is_file():
            return []
        lines = _read_text(path).splitlines()
        records = [_parse_json(line, path, "metrics.jsonl", i) for i, line in enumerate(lines) if line.strip()]
        if not all(isinstance(r, dict) for r in records):
            raise AuxgenError(f"{path} holds a line that is not an epoch's record (a JSON object); the run "
                              f"directory's metrics.jsonl is damaged")
        return records


def open_run(path: str | Path) -> Run:
    """A Run handle for an existing run directory (finished or not)."""
    from auxgen.run import read_run_config

    path = _run_path(path)
    read_run_config(path)  # an AuxgenError unless it is a run directory
    summary_file = RunDir(path).summary
    summary = _read_json(summary_file, "summary.json") if summary_file.is_file() else None
    if summary is not None and not isinstance(summary, dict):
        raise AuxgenError(f"{summary_file} is not a run summary (a JSON object); the run directory is damaged")
    return Run(path, summary)


def _read_json(path: Path, what: str) -> Any:
    """A JSON file parsed; damage is one AuxgenError line naming the file."""
    return _parse_json(_read_text(path), path, what)


def _parse_json(text: str, path: Path, what: str, line: int | None = None) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        where = "" if line is None else f" line {line + 1}"
        raise AuxgenError(f"{path}{where} is not valid JSON; the run directory's {what} is damaged") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise AuxgenError(f"{path} cannot be read ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise AuxgenError(f"{path} is not UTF-8 text; the run directory is damaged") from None


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else open_run(_run_path(run))


def _run_path(run: Run | str | Path) -> Path:
    if isinstance(run, Run):
        return run.path
    if isinstance(run, (str, os.PathLike)):
        return Path(run)
    raise AuxgenError(f"expected a Run or a run directory, got {type(run).__name__}")


def _out_path(out: object) -> Path:
    if isinstance(out, (str, os.PathLike)) and str(out):
        return Path(out)
    raise AuxgenError(f"out must be a file or folder path (str or Path), got {type(out).__name__} {str(out)[:80]!r}")


def resolve_options(config: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig, or a dict of options (dashes or underscores), validated as the command line does."""
    if isinstance(config, TrainConfig):
        options = config.to_dict()
    elif isinstance(config, Mapping):
        options = {str(k).replace("-", "_"): v for k, v in config.items()}
    else:
        raise AuxgenError(f"config must be a TrainConfig or a dict of options, got {type(config).__name__}")
    return resolve_config(None, options)


def train(config: TrainConfig | Mapping[str, Any], out: str | Path, *, force: bool = False,
          show: bool = False) -> Run:
    """Train a new run into `out` (as `auxgen train --out OUT`) and return its handle.

    `config` is a TrainConfig or a dict of its fields, e.g. {"dataset": "digits", "epochs": 2};
    `force` replaces an earlier auxgen run in `out`; `show` prints the progress display.
    Calls from several threads of one process train one at a time (torch's global RNG and forward-mode AD
    are process-wide), so each gives the checkpoint it would alone.
    """
    cfg = resolve_options(config)
    out = Path(out)
    check_out_outside_data(out, cfg)
    summary = train_run(cfg, out, resume=False, force=force, show=show)
    return Run(out, {k: v for k, v in summary.items() if k != "run"})


def resume(run: Run | str | Path, *, epochs: int | None = None, show: bool = False) -> Run:
    """Continue an interrupted run (as `auxgen train --resume RUN`), optionally to more epochs."""
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise AuxgenError(f"epochs must be a positive integer (the total to train to) or None, got "
                          f"{type(epochs).__name__} {epochs!r}")
    path = _as_run(run).path
    RunDir(path).check_resumable()
    cfg = resolve_config(RunDir(path).config, {"epochs": epochs})
    summary = train_run(cfg, path, resume=True, force=False, show=show)
    return Run(path, {k: v for k, v in summary.items() if k != "run"})


_training: Path | None = None  # the run directory this process trains into (what an interrupt reports on)


def training_dir() -> Path | None:
    return _training


def train_run(cfg: TrainConfig, out: Path, *, resume: bool, force: bool, show: bool) -> dict[str, Any]:
    """Check what can be checked, prepare (and lock) the run directory, train; the summary."""
    from auxgen import distributed
    from auxgen.compose import hierarchy_for, input_paths, load_data
    from auxgen.progress import tensorboard_writer_class
    from auxgen.runtime import pick_device
    from auxgen.trainer import check_features_source, split_rows
    from auxgen.trainer import train as train_loop

    # what can fail on the inputs fails before --force deletes an earlier run in --out
    if not resume:
        RunDir(out).refuse_inputs_inside(input_paths(cfg))
    if cfg.log == "tensorboard":
        tensorboard_writer_class()
    device = pick_device(cfg.device)
    dist = distributed.init(device)  # torchrun: one process per GPU (or CPU share), rank 0 writes the run
    dist.check_batch(cfg.batch_size)
    distributed.check_sync_bn(cfg.sync_bn, cfg.method, cfg.meta_order, device)
    data = dist.main_first(lambda: load_data(cfg))  # rank 0 first: a --download happens once
    hierarchy_for(cfg, data)
    split_rows(cfg, len(data.train))  # the data fits the batch size
    check_features_source(cfg, data)
    with contextlib.ExitStack() as stack:
        dist.on_main(lambda: _prepare(stack, out, resume, force))
        return train_loop(cfg, out, resume=resume, show=show, data=data)


def _prepare(stack: contextlib.ExitStack, out_dir: Path, resume: bool, force: bool) -> None:
    """Lock the run directory (held in `stack` while training) and make it ready to write into."""
    global _training
    run_dir = RunDir(out_dir)
    _training = out_dir
    if resume:
        stack.enter_context(run_dir.lock())
        run_dir.remove_stale_temp_files()
        run_dir.check_resumable()
    else:
        # lock before prepare when the folder exists: --force must not delete the files of a run
        # that is still training
        locked = out_dir.is_dir()
        if locked:
            stack.enter_context(run_dir.lock())
        run_dir.prepare(force)
        if not locked:
            stack.enter_context(run_dir.lock())
            stack.callback(run_dir.remove_if_empty)  # made here: a run that fails before its first file leaves none


def check_out_outside_data(out: Path, cfg: TrainConfig) -> None:
    """An ImageFolder's subfolders are its classes: a run directory inside the tree would become one."""
    from auxgen.paths import refuse_inside

    if cfg.dataset == "imagefolder":
        refuse_inside(out, (cfg.data_root, cfg.test_root), "--out", "the ImageFolder tree",
                      "its folder would become a class of the data")


def export(run: Run | str | Path, out: str | Path, *, format: str = "hdf5", checkpoint: str = "last",
           split: str = "all", dtype: str = "float32", views: int = 0, images: bool = True,
           shard_size: int | str | None = None, max_count: int | None = None,
           generator_formats: Sequence[str] | str = (), batch_size: int = 500, seed: int = 0,
           data_root: str | None = None, device: str | None = None, force: bool = False, resume: bool = False,
           show: bool = False) -> dict[str, Any]:
    """Export a run's soft labels (as `auxgen export`): HDF5 (`format="hdf5"`), WebDataset shards ("wds") or
    Parquet tables ("parquet").

    Returns the export's summary (files, counts, label statistics; the manifest's path under "manifest").
    """
    from auxgen.distributed import current
    from auxgen.export import ExportOptions, export_labels
    from auxgen.rundir import output_lock

    path = _run_path(run)  # export_labels says what is wrong with a folder that is not a run
    out = _out_path(out)
    formats = tuple(generator_formats) if isinstance(generator_formats, list) else generator_formats
    # paths may come as Path objects; every option's type is checked by ExportOptions.validated
    checkpoint, data_root = (str(p) if isinstance(p, os.PathLike) else p for p in (checkpoint, data_root))
    options = ExportOptions(fmt=format, checkpoint=checkpoint, split=split, dtype=dtype, views=views, images=images,
                            shard_size=shard_size, max_count=max_count, generator_formats=formats, force=force,
                            resume=resume, batch_size=batch_size, seed=seed, data_root=data_root, device=device)
    options.validated()  # before the lock file is made beside --out
    # two exports into one --out at once would interleave their files; under torchrun the ranks write
    # one export together and rank 0 holds the lock for all of them
    lock = output_lock(out, f"another auxgen export is writing {out}; wait for it or choose another --out")
    with lock if current().is_main else contextlib.nullcontext():
        return export_labels(path, out, options=options, show=show)


def label(run_or_generator: Run | str | Path | torch.nn.Module, images: np.ndarray | torch.Tensor,
          primary: Sequence[int] | np.ndarray | torch.Tensor, *, batch_size: int = 500,
          device: str | None = None) -> np.ndarray:
    """Soft auxiliary labels, float32 [N, K], of uint8 images and their primary classes.

    `images` are uint8 [N, C, H, W] (a tensor or array) or a numpy [N, H, W, C] batch (grayscale
    also [N, H, W]), the stored format of the run's data; `primary` holds each image's primary
    class index (the order of config.json's data.class_names). The computation is the export's
    (eval mode, batches of `batch_size` rows), so the same images give the exported labels exactly.
    """
    import numpy as np
    import torch

    from auxgen.export import compute_soft_labels
    from auxgen.models import LabelGenerator

    shape = None
    if isinstance(run_or_generator, torch.nn.Module):
        if not isinstance(run_or_generator, LabelGenerator):
            raise AuxgenError(f"label() takes a run or an auxgen label generator (run.generator), got a "
                              f"{type(run_or_generator).__name__} module")
        gen, dev = run_or_generator, torch.device(device) if device else next(run_or_generator.parameters()).device
    else:
        run = _as_run(run_or_generator)
        loaded = run.load(device=device)
        gen, dev, shape = run.generator, loaded.device, tuple(loaded.meta["data"]["image_shape"])
    x = _images_nchw(images, shape)
    y = _primary(primary, len(x), _num_primary(gen))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AuxgenError(f"batch_size must be a positive integer, got {batch_size!r}")
    return np.ascontiguousarray(compute_soft_labels(gen, x, y, dev, batch_size).numpy(), dtype=np.float32)


def _num_primary(gen: Any) -> int | None:
    block_id = getattr(gen, "block_id", None)
    return int(block_id.max()) + 1 if block_id is not None and block_id.numel() else None


def _images_nchw(images: Any, shape: tuple[int, ...] | None) -> torch.Tensor:
    """uint8 images as a [N, C, H, W] tensor; NHWC numpy batches are transposed."""
    import numpy as np
    import torch

    if isinstance(images, np.ndarray):
        arr = images
    elif isinstance(images, torch.Tensor):
        arr = images.detach().cpu()
    else:
        raise AuxgenError(f"images must be a numpy array or a torch tensor of uint8, got {type(images).__name__}")
    if arr.dtype != (np.uint8 if isinstance(arr, np.ndarray) else torch.uint8):
        raise AuxgenError(f"images must be uint8 (0..255, the stored format of the run's data), got {arr.dtype}")
    if arr.ndim == 3:  # grayscale [N, H, W]
        arr = arr[:, None]
    if arr.ndim != 4:
        raise AuxgenError(f"images must be a batch [N, C, H, W] (or numpy [N, H, W, C]), got shape "
                          f"{list(arr.shape)}")
    t = torch.from_numpy(np.ascontiguousarray(arr)) if isinstance(arr, np.ndarray) else arr
    channels = (shape[0],) if shape else (1, 3)
    if t.shape[1] not in channels and t.shape[-1] in channels and isinstance(images, np.ndarray):
        t = t.permute(0, 3, 1, 2)  # numpy HWC images
    if shape is not None and tuple(t.shape[1:]) != shape:
        raise AuxgenError(f"images have shape {list(t.shape[1:])} per image but the run was trained on "
                          f"{list(shape)} ([C, H, W]); give them in the run's stored format")
    if t.shape[1] not in (1, 3) and shape is None:
        raise AuxgenError(f"images must have 1 or 3 channels ([N, C, H, W]), got shape {list(t.shape)}")
    return t.contiguous()


def _primary(primary: Any, n: int, num_primary: int | None) -> torch.Tensor:
    import numpy as np
    import torch

    try:
        arr = np.asarray(primary.detach().cpu() if isinstance(primary, torch.Tensor) else primary)
    except (TypeError, ValueError):
        raise AuxgenError("primary must be a sequence of class indices") from None
    if arr.ndim != 1 or len(arr) != n:
        raise AuxgenError(f"primary must hold one class index per image ({n}), got shape {list(arr.shape)}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise AuxgenError(f"primary must hold integer class indices, got {arr.dtype}")
    if n and (arr.min() < 0 or (num_primary is not None and arr.max() >= num_primary)):
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise AuxgenError(f"primary class {bad} is outside 0..{(num_primary or 1) - 1}")
    return torch.from_numpy(arr.astype(np.int64))
