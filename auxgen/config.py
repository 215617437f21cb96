"""The training configuration: one typed dataclass, saved with every run, loadable from a
JSON or TOML file and overridable from the command line. Defaults and help live here only."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from auxgen.errors import AuxgenError

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "imagefolder")
METHODS = ("maxl", "single", "random", "human")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that determines a training run (the output folder aside)."""

    dataset: str = _f("digits", f"Dataset: {', '.join(DATASETS)}.")
    data_root: str = _f("data", "Folder holding the dataset (the ImageFolder tree for imagefolder).")
    test_root: str | None = _f(None, "ImageFolder test tree; without it a seeded 20% split of data-root is the test set.")
    download: bool = _f(False, "Let torchvision download cifar10/cifar100/mnist/fashion-mnist/svhn into data-root.")
    primary_level: int = _f(20, "CIFAR-100 primary task: 3, 10 or 20 classes of the four-level hierarchy.")
    aux_level: int = _f(100, "CIFAR-100 human auxiliary labels for --method human: 10, 20 or 100 classes.")
    image_size: int = _f(32, "ImageFolder images are resized to this square size.")
    psi: str | None = _f(None, "Auxiliary classes per primary class: '5' (uniform) or '2,3,4' (one per class). Default 5.")
    psi_file: str | None = _f(None, "JSON file with psi as a list (or {\"psi\": [...]}).")
    method: str = _f("maxl", "maxl (learned labels), single (primary only), random (fixed random labels), human (CIFAR-100 finer labels).")
    backbone: str = _f("vgg16", "Backbone of both networks: vgg16 (paper), resnet18 (CIFAR-style), cnn (small, fast).")
    width: int | None = _f(None, "Backbone base width (cnn 32, vgg16/resnet18 64 by default).")
    gen_width: int | None = _f(None, "Label generator's backbone width if it should differ (a narrower generator makes iterations cheaper).")
    epochs: int = _f(200, "Training epochs; the learning rates halve at 25%, 50% and 75% of them.")
    batch_size: int = _f(100, "Batch size of the training and meta steps.")
    lr: float = _f(0.01, "Multi-task network learning rate (SGD); the meta step's inner step alpha follows it.")
    momentum: float = _f(0.0, "SGD momentum of the multi-task network (paper: none).")
    weight_decay: float = _f(0.0, "Weight decay of the multi-task network (paper: none).")
    gen_lr: float = _f(1e-3, "Label generator learning rate (SGD; authors' code 1e-3, paper text 1e-5).")
    gen_weight_decay: float = _f(5e-4, "Label generator weight decay.")
    gen_decay: str = _f("l2", "Kind of generator weight decay: l2 (authors' code) or l1 (paper text).")
    gamma: float = _f(2.0, "Focal loss focusing parameter; 0 is cross-entropy.")
    entropy_weight: float = _f(0.2, "Weight lambda of the entropy regulariser against class collapse.")
    meta_order: int = _f(2, "2: exact second-order meta-gradient; 1: finite-difference first-order variant.")
    meta_split: float = _f(0.0, "Fraction of the training set held out for the meta step; 0 reuses the training batches.")
    fused_lookahead: bool = _f(False, "Run the meta step first and reuse its look-ahead as the training step (one pass cheaper; needs --meta-split 0).")
    augment: str = _f("auto", "auto (crop+flip for 32x32 RGB sets and ImageFolder, none otherwise), on or off.")
    seed: int = _f(0, "Random seed of initialisation, shuffling, augmentation and random labels.")
    device: str = _f("auto", "auto (cuda when available), cpu or cuda.")
    bf16: bool = _f(False, "bf16 autocast on CUDA (ignored on CPU).")
    cosine_every: int = _f(0, "Log the primary/auxiliary gradient cosine every N steps (0: off; costs 2 backward passes).")
    eval_batch_size: int = _f(500, "Batch size of evaluation.")

    def validate(self) -> TrainConfig:
        """Raise AuxgenError on values no run can use."""
        choices = {"dataset": DATASETS, "method": METHODS, "augment": ("auto", "on", "off"),
                   "gen_decay": ("l1", "l2"), "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise AuxgenError(f"unknown {name.replace('_', '-')} {getattr(self, name)!r}; "
                                  f"choose one of {', '.join(allowed)}")
        from auxgen.models import BACKBONES
        if self.backbone not in BACKBONES:
            raise AuxgenError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.meta_order not in (1, 2):
            raise AuxgenError(f"--meta-order must be 1 or 2, got {self.meta_order}")
        if not 0.0 <= self.meta_split < 1.0:
            raise AuxgenError(f"--meta-split must be in [0, 1), got {self.meta_split}")
        for name in ("width", "gen_width"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AuxgenError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("epochs", "batch_size", "eval_batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise AuxgenError(f"--{name.replace('_', '-')} must be at least 1")
        if self.fused_lookahead and self.meta_split > 0:
            raise AuxgenError("--fused-lookahead reuses the training batch for the meta step; it needs --meta-split 0")
        if self.batch_size < 2:
            raise AuxgenError("--batch-size must be at least 2 (batch norm needs two samples)")
        if self.method == "human" and self.dataset != "cifar100":
            raise AuxgenError("--method human needs the CIFAR-100 hierarchy: use --dataset cifar100")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AuxgenError(f"{where}: unknown option(s) {', '.join(unknown)}")
        return cls(**data)


def field_help(name: str) -> str:
    """The help sentence of a config field with its default, for the CLI."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    default = f.default if f.default is not MISSING else None
    suffix = "" if default is None or "Default" in f.metadata["help"] else f" [default: {default}]"
    return f.metadata["help"] + suffix


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file (.json or .toml) into a dict of TrainConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise AuxgenError(f"config file {path} does not exist")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise AuxgenError(f"config file {path} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise AuxgenError(f"config file {path} must hold a table/object of options")
    data = data.get("train", data)  # a run's config.json keeps the options under "train"
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve_config(file: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file, then the command-line options that were given (not None)."""
    data = load_config_file(file) if file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(data, where=str(file or "options")).validate()
    # saved runs must find their data and psi file from any working directory
    for name in ("data_root", "test_root", "psi_file"):
        if getattr(cfg, name):
            setattr(cfg, name, str(Path(getattr(cfg, name)).expanduser().resolve()))
    return cfg
