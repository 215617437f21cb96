"""The training configuration: one typed dataclass, saved with every run, loadable from a
JSON or TOML file and overridable from the command line. Defaults and help live here only."""

from __future__ import annotations

import functools
import json
import math
import stat
import sys
import types
import typing
from collections.abc import Collection
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

from auxgen.data import DATASETS, THUMBNAIL_MATCHES
from auxgen.errors import AuxgenError
from auxgen.hierarchy import psi_spec_values
from auxgen.models import BACKBONES, backbone_entry, is_weights_file
from auxgen.runtime import PRECISIONS

METHODS = ("maxl", "single", "random", "human", "kmeans")
# sanity caps: beyond them a run cannot fit in memory, and a typo (one zero too many) would
# otherwise fail deep inside torch with a traceback
MAX_WIDTH = 1024
MAX_IMAGE_SIZE = 1024
MAX_SEED = 2**62  # torch seeds are 64-bit; the run derives seed + 1 .. seed + 3


# The published hyper-parameters (shared/maxl.md), kept exactly; a preset fixes every option
# of the optimisation and the objective (every field tagged objective=True; a test checks), so
# later changes of auxgen's defaults cannot move it.
_PAPER_COMMON = dict(backbone="vgg16", width=None, gen_width=None, epochs=200, batch_size=100, lr=0.01,
                     momentum=0.0, weight_decay=0.0, lr_schedule="step", warmup_epochs=0, gen_weight_decay=5e-4,
                     gamma=2.0, entropy_weight=0.2, usage_entropy="batch", sharpness_weight=0.0, meta_norm="none",
                     meta_weight=1.0, consistency_weight=0.0, invariance_weight=0.0, aux_weight=1.0,
                     neumann_steps=3, hypergradient="lookahead", meta_every=1, pair_colour="off", pairs="views",
                     neighbours=5, aux_weighting="fixed", gen_input="image", val_split=0.0,
                     gen_optimizer="sgd", meta_order=2, fused_lookahead=False, augment="auto", flip=True, psi=None)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {**_PAPER_COMMON, "gen_lr": 1e-3, "gen_decay": "l2", "meta_split": 0.0, "schedule": "alternate"},
    "paper-text": {**_PAPER_COMMON, "gen_lr": 1e-5, "gen_decay": "l1", "meta_split": 0.1, "schedule": "interleave"},
}


# options added after runs were first saved whose default would change what an older run is: a run's
# config.json without one of them was trained with the value here
SAVED_BEFORE: dict[str, Any] = {"gen_input": "image", "val_split": 0.0}


def saved_run_options(train: Any) -> Any:
    """A run's recorded options ("train" of its config.json), with what SAVED_BEFORE says where they predate it.

    Runs saved before --features-from was refused outside --method kmeans may record it with another
    method, which ignored it: it is dropped, so they still load.
    """
    if not isinstance(train, dict):
        return train
    if train.get("method", TrainConfig.method) != "kmeans":
        train = {k: v for k, v in train.items() if k != "features_from"}
    return {**SAVED_BEFORE, **train}


def _f(default: Any, help: str, choices: Collection[str] | None = None, objective: bool = False) -> Any:
    """A config field: its default, its help sentence, the values it may take (validate checks
    them; a registry's dict is passed as is, so an entry added to it is a choice), and whether it
    is a term of the generator's objective (every preset must set those)."""
    return field(default=default, metadata={"help": help, "choices": choices, "objective": objective})


_DOWNLOADABLE = "/".join(name for name, d in DATASETS.items() if d.downloads)


@dataclass
class TrainConfig:
    """Everything that determines a training run (the output folder aside)."""

    preset: str | None = _f(None, "Start from a named set of options: paper (the authors' public code), paper-text (the ICLR text); the file and flags override it.", PRESETS)
    dataset: str = _f("digits", f"Dataset: {', '.join(DATASETS)}.", DATASETS)
    data_root: str = _f("data", "Folder holding the dataset (the ImageFolder tree for imagefolder; for csv the list file, rows PATH,LABEL[,FINE] with paths relative to its folder; for hf a .parquet file or a save_to_disk folder).")
    test_root: str | None = _f(None, "ImageFolder test tree; without it a seeded 20% split of data-root is the test set.")
    download: bool = _f(False, f"Let torchvision download {_DOWNLOADABLE} into data-root.")
    primary_level: int = _f(20, "CIFAR-100 primary task: 3, 10 or 20 classes of the four-level hierarchy.")
    aux_level: int = _f(100, "CIFAR-100 human auxiliary labels for --method human: 10, 20 or 100 classes.")
    image_size: int = _f(32, "ImageFolder, csv and hf images are resized to this square size; with a pretrained backbone (torchvision:NAME, timm:NAME) and not given, the size its weights want (224 mostly).")
    primary_groups: int | None = _f(None, "digits only: primary task = 2 groups (0-4, 5-9) or 5 groups (0-1, ..., 8-9) of digits; the digit is the human auxiliary label.")
    hierarchy_depth: int = _f(1, "imagefolder: 1 (ROOT/CLASS/IMG) or 2 (ROOT/COARSE/FINE/IMG: coarse = primary, fine = human auxiliary labels, psi from the tree).")
    psi: str | None = _f(None, "Auxiliary classes per primary class: '5' (uniform) or '2,3,4' (one per primary class, in the order of the run's config.json data.class_names: label index order, i.e. sorted folder names for imagefolder); a config file may also give an integer or a list of integers. At most 1000 per class and 10000 in all. Default 5.")
    psi_file: str | None = _f(None, "JSON file with psi as a list (or {\"psi\": [...]}).")
    method: str = _f("maxl", "maxl (learned labels), single (primary only), random (fixed random labels), human (the data's finer labels: CIFAR-100, digit groups, two-level ImageFolder), kmeans (k-means clusters of single-task features inside each primary class).", METHODS)
    features_from: str | None = _f(None, "--method kmeans: a finished single-task (or any) run of images of the same shape whose network gives the features; without it a single-task network is trained first, in the same run, for the same epochs.")
    backbone: str = _f("cnn", f"Backbone of both networks (the paper's: vgg16, as --preset paper sets): {', '.join(f'{n} ({b.about})' for n, b in BACKBONES.items())}.", BACKBONES)
    weights: str | None = _f(None, "Pretrained backbones (torchvision:NAME, timm:NAME): the weights both networks start from: a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...; timm: DEFAULT), fetched once into the torch hub cache (TORCH_HOME) or found there offline, or a local state_dict file of the same architecture (torch.save; read with weights_only). Default: random initialisation.")
    image_column: str = _f("image", "--dataset hf: the column holding the images (encoded bytes, or {bytes, path} structs as Hugging Face writes them).")
    label_column: str = _f("label", "--dataset hf: the column of primary labels (integers or names).")
    fine_column: str | None = _f(None, "--dataset hf: a column of fine labels inside each primary class: the two-level hierarchy (fine = human auxiliary labels, psi from the data), as --hierarchy-depth 2 for imagefolder.")
    width: int | None = _f(None, f"Backbone base width ({', '.join(f'{n} {b.default_width}' for n, b in BACKBONES.items())} by default).")
    gen_width: int | None = _f(None, "Label generator's backbone width if it should differ (a narrower generator makes iterations cheaper).")
    epochs: int = _f(30, "Training epochs (the paper: 200); the learning-rate schedule stretches to fit them.")
    batch_size: int = _f(32, "Batch size of the training and meta steps (the paper's: 100).")
    lr: float = _f(0.05, "Multi-task network learning rate (SGD; paper 0.01); the meta step's inner step alpha follows it.")
    momentum: float = _f(0.9, "SGD momentum of the multi-task network (paper: none).")
    weight_decay: float = _f(5e-4, "Weight decay of the multi-task network (paper: none).")
    lr_schedule: str = _f("cosine", "step: halve at 25%, 50% and 75% of the epochs (the paper); cosine: cosine decay to zero after a linear warm-up.", ("step", "cosine"))
    warmup_epochs: int = _f(2, "Epochs of linear learning-rate warm-up (cosine schedule).")
    gen_lr: float = _f(1e-3, "Label generator learning rate (authors' code: SGD 1e-3; paper text: SGD 1e-5).")
    gen_weight_decay: float = _f(5e-4, "Label generator weight decay.")
    gen_decay: str = _f("l2", "Kind of generator weight decay: l2 (authors' code) or l1 (paper text).", ("l1", "l2"))
    gamma: float = _f(2.0, "Focal loss focusing parameter; 0 is cross-entropy.", objective=True)
    entropy_weight: float = _f(2.0, "Weight lambda of the usage (entropy) regulariser against class collapse (paper: 0.2).", objective=True)
    usage_entropy: str = _f("block", "Usage term of the entropy regulariser: batch (entropy of the batch-mean label over all K, the paper) or block (per primary-class block).", ("batch", "block"), objective=True)
    sharpness_weight: float = _f(1.0, "Weight of the mean per-sample label entropy (minimised); with the usage term this maximises the information a label carries about its sample.", objective=True)
    consistency_weight: float = _f(1.0, "Weight of a term asking the generator's label of an image to agree with its label of a paired image (--pairs: one of its nearest images of the same class by default, or a shifted copy), symmetric cross-entropy.", objective=True)
    meta_norm: str = _f("none", "none: the meta-gradient as in the paper (scaled by the inner step alpha); alpha: divided by alpha, so it does not shrink with the learning rate.", ("none", "alpha"), objective=True)
    meta_weight: float = _f(0.0, "Weight of the meta-gradient (the look-ahead primary loss) in the generator's objective; 1 is MAXL (the paper, --preset paper); the default 0 leaves it out, since it showed no measurable effect on the labels (docs/label_quality.md), and then no look-ahead is computed.", objective=True)
    gen_optimizer: str = _f("adam", "Label generator optimiser: adam or sgd (paper).", ("sgd", "adam"))
    meta_order: int = _f(2, "2: exact second-order meta-gradient; 1: finite-difference first-order variant.", objective=True)
    meta_split: float = _f(0.0, "Fraction of the training set held out for the meta step; 0 reuses the training batches.")
    val_split: float | None = _f(None, "Fraction of the training set held out for validation (seeded, the same share of each primary class): the best checkpoint and every automatic choice are judged on it, the test split only gives the final figure; 0: none (the best is then chosen on test accuracy, as the paper does). Default: 0.1 when each primary class has at least 200 training images, else 0; config.json records the rows.")
    schedule: str = _f("interleave", "interleave: a training step then a meta step on each batch (the paper's Algorithm 1); alternate: each epoch a full pass of training steps, then a reshuffled full pass of meta steps (the authors' code).", ("interleave", "alternate"))
    fused_lookahead: bool = _f(False, "Run the meta step first and reuse its look-ahead as the training step (one pass cheaper; needs --meta-split 0).")
    flip: bool = _f(True, "Horizontal flips in the augmentation (turn off for data like digits, whose mirror image is another class).")
    augment: str = _f("auto", "auto (crop+flip for 32x32 RGB sets and ImageFolder, none otherwise), on or off.", ("auto", "on", "off"))
    seed: int = _f(0, "Random seed of initialisation, shuffling, augmentation and random labels.")
    device: str = _f("auto", "auto (cuda when available), cpu or cuda.", ("auto", "cpu", "cuda"))
    precision: str = _f("fp32", "fp32, or bf16: autocast on CUDA for training and evaluation (fp32 on the CPU, where bf16 is slower); labels are float32 either way.", PRECISIONS)
    sync_bn: bool = _f(False, "Batch-norm statistics over all processes of a torchrun run (CUDA; needs --meta-order 1 with maxl); default: per process.")
    cosine_every: int = _f(0, "Log the primary/auxiliary gradient cosine every N steps (0: off; costs 2 backward passes).")
    log: str = _f("none", "Also log the epoch metrics of metrics.jsonl elsewhere: none, or tensorboard (RUN/tensorboard/, for `tensorboard --logdir RUN`; needs `pip install tensorboard`).", ("none", "tensorboard"))
    log_every: int = _f(50, "When stderr is not a terminal (a log file, CI), print a plain progress line every N training steps (counted at the trainer's host syncs, every 10 steps) and at least every 30 s.")
    eval_batch_size: int = _f(500, "Batch size of evaluation.")
    hypergradient: str = _f("lookahead", "maxl: how theta2's meta-signal is computed: lookahead (MAXL: through one SGD step of theta1, --meta-order) or implicit (AuxiLearn: the implicit function theorem with a truncated Neumann series, on held-out batches when --meta-split is set).", ("lookahead", "implicit"))
    neumann_steps: int = _f(3, "--hypergradient implicit: Hessian-vector products in the Neumann series of the inverse Hessian.", objective=True)
    pair_colour: str = _f("auto", "The generator's pair images (for --consistency-weight and --invariance-weight) also change colour: a random brightness and, for RGB, a random channel order, so labels cannot be about colour. auto: on for RGB images, off for greyscale; on; off.", ("auto", "on", "off"))
    pairs: str = _f("neighbours", "The generator's pair terms (--consistency-weight, --invariance-weight) compare an image's label with that of: views (another augmented view of it) or neighbours (another view of one of its nearest images of the same class, by thumbnail similarity).", ("neighbours", "views"))
    gen_input: str = _f("auto", "maxl: what the label generator's network sees: image (the image, as the multi-task network), or shape (each image's shape map: its colours projected on its own main colour axis, scaled to one contrast, so the labels cannot follow colour or brightness, only the drawn shape); auto: shape for RGB images, image for greyscale.", ("auto", "image", "shape"))
    neighbours: int = _f(5, "--pairs neighbours: how many nearest images of the same class each image draws its pair from.")
    neighbour_match: str = _f("auto", "--pairs neighbours: how images are compared. auto: aligned for RGB images, shape for greyscale; pixels: the cosine of mean-centred 8x8 thumbnails, colour included; shape: each RGB thumbnail is first projected on its own main colour axis, so a shape drawn in other colours still matches (on greyscale images the two are the same); aligned: shape, with each image's ink also moved to the centre and scaled to one size by its image moments, so an object drawn elsewhere or larger still matches; features: the cosine of the multi-task network's own backbone features, mined again at the start of every epoch, as SCAN mines neighbours from learned features.", ("auto", *THUMBNAIL_MATCHES, "features"))
    aux_weighting: str = _f("fixed", "maxl: the per-sample weights of the primary and auxiliary losses in theta1's training loss: fixed (1 and --aux-weight) or learned (AuxiLearn's non-negative combination of per-sample losses, a small network trained by the meta-signal with the generator; needs --meta-weight above 0).", ("fixed", "learned"))
    meta_every: int = _f(2, "maxl: a generator step (with --meta-weight above 0, a meta step) every N training steps; the steps between train theta1 on the generator's current labels. 2 halves the generator's cost at no measurable loss in label quality (docs/label_quality.md).")
    aux_weight: float = _f(1.0, "Weight of the auxiliary loss in the multi-task network's training loss (and in the meta step's look-ahead).", objective=True)
    invariance_weight: float = _f(0.0, "Weight of an invariance prior for the generator: the mutual information of the auxiliary classes of two independently augmented views of each image (IIC), inside each primary block.", objective=True)

    def validate(self) -> TrainConfig:
        """Raise AuxgenError on values no run can use."""
        for name, value in check_types(self.__dict__, "config").items():
            setattr(self, name, value)  # ints given for float options become floats
        _check_numbers(self)
        if isinstance(self.backbone, str) and ":" in self.backbone:
            backbone_entry(self.backbone)  # a torchvision:/timm: name: why it is unknown, in one line
        _check_choices(self)
        if self.meta_order not in (1, 2):
            raise AuxgenError(f"--meta-order must be 1 or 2, got {self.meta_order}")
        entry = backbone_entry(self.backbone)
        if self.method == "maxl" and self.meta_order == 2 and not entry.forward_ad:
            raise AuxgenError(f"--backbone {self.backbone} has layers without a forward-mode AD rule, which the exact "
                              f"meta-gradient (--meta-order 2) needs; use --meta-order 1")
        if self.weights is not None and not entry.pretrained:
            raise AuxgenError(f"--weights is for pretrained backbones (torchvision:NAME, timm:NAME), not {self.backbone}")
        if entry.pretrained and (self.width is not None or self.gen_width is not None):
            raise AuxgenError(f"--backbone {self.backbone} has the width of its weights; drop --width/--gen-width")
        if not 0.0 <= self.meta_split < 1.0:
            raise AuxgenError(f"--meta-split must be in [0, 1), got {self.meta_split}")
        if self.val_split is not None and not 0.0 <= self.val_split < 1.0:
            raise AuxgenError(f"--val-split must be in [0, 1), got {self.val_split}")
        for name in ("width", "gen_width"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AuxgenError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("epochs", "batch_size", "eval_batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise AuxgenError(f"--{name.replace('_', '-')} must be at least 1")
        if self.fused_lookahead and self.schedule == "alternate":
            raise AuxgenError("--fused-lookahead makes the meta step's look-ahead the training step; it needs --schedule interleave")
        if self.fused_lookahead and self.meta_split > 0:
            raise AuxgenError("--fused-lookahead reuses the training batch for the meta step; it needs --meta-split 0")
        if self.hypergradient == "implicit" and (self.fused_lookahead or self.schedule == "alternate"):
            raise AuxgenError("--hypergradient implicit has no look-ahead to fuse and runs interleaved; it needs "
                              "--schedule interleave and --no-fused-lookahead")
        if self.aux_weighting == "learned" and (self.method != "maxl" or not self.meta_weight):
            raise AuxgenError("--aux-weighting learned is trained by the meta-signal: it needs --method maxl and "
                              "--meta-weight above 0")
        if self.neumann_steps < 0:
            raise AuxgenError(f"--neumann-steps must be 0 or more, got {self.neumann_steps}")
        if self.batch_size < 2:
            raise AuxgenError("--batch-size must be at least 2 (batch norm needs two samples)")
        if self.primary_groups is not None and (self.dataset != "digits" or self.primary_groups not in (2, 5)):
            raise AuxgenError("--primary-groups takes 2 or 5 and needs --dataset digits")
        if self.fine_column is not None and self.dataset != "hf":
            raise AuxgenError("--fine-column is for --dataset hf (csv lists take a third column, imagefolder "
                              "--hierarchy-depth 2)")
        if self.hierarchy_depth not in (1, 2) or (self.hierarchy_depth == 2 and self.dataset != "imagefolder"):
            raise AuxgenError("--hierarchy-depth takes 1 or 2; depth 2 needs --dataset imagefolder")
        if self.features_from is not None and self.method != "kmeans":
            raise AuxgenError(f"--features-from gives the features of --method kmeans; --method {self.method} "
                              f"would ignore it: drop it or use --method kmeans")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        if isinstance(data.get("bf16"), bool) and "precision" not in data:  # runs saved before --precision
            data = {**{k: v for k, v in data.items() if k != "bf16"}, "precision": "bf16" if data["bf16"] else "fp32"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AuxgenError(f"{where}: unknown option(s) {', '.join(unknown)}")
        return cls(**check_types(data, where))


_SIMPLE_TYPES = {str, int, float, bool, type(None)}


@functools.lru_cache(maxsize=1)
def field_types() -> dict[str, tuple[type, ...]]:
    """Each TrainConfig field's allowed types, e.g. `int | None` -> (int, NoneType)."""
    # `from __future__ import annotations` leaves the annotations as strings: evaluate them
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        out[name] = typing.get_args(hint) if union else (hint,)
    return out


def check_types(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Type-check option values against TrainConfig's field types; returns them with ints widened
    to float for float options. bool never passes as int (JSON `true` is not 1 epoch), and None
    only for Optional options."""
    allowed, out = field_types(), {}
    for name, value in values.items():
        if name == "psi":  # a config file may write psi = 3 or psi = [2, 3]: the same as --psi 3 / --psi 2,3
            value = _psi_as_spec(value)
        kinds = allowed.get(name)
        if kinds is None or not set(kinds) <= _SIMPLE_TYPES:  # unknown options are from_dict's to report;
            out[name] = value                                 # other annotations are not checked here
            continue
        if value is None and type(None) in kinds:
            out[name] = value
        elif isinstance(value, bool):
            if bool not in kinds:
                raise _type_error(where, name, kinds, value)
            out[name] = value
        elif isinstance(value, int) and int in kinds:
            out[name] = value
        elif isinstance(value, (int, float)) and float in kinds:
            out[name] = float(value)
        elif isinstance(value, str) and str in kinds:
            out[name] = value
        else:
            raise _type_error(where, name, kinds, value)
    return out


def _psi_as_spec(value: Any) -> Any:
    """psi given as an integer or a list of integers, in the string form of --psi ('3', '2,3'); others as given."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    return value


def _type_error(where: str, name: str, kinds: tuple[type, ...], value: Any) -> AuxgenError:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    want = " or ".join(names.get(k, k.__name__) for k in kinds)
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    also = " (in a file also an integer or a list of integers)" if name == "psi" else ""
    return AuxgenError(f"{where}: option {name.replace('_', '-')} must be {want}{also}, got {type(value).__name__} "
                       f"{shown}")


def _check_choices(cfg: TrainConfig) -> None:
    """Options with a fixed set of values (their field's `choices`); None passes where it is the default."""
    for f in fields(cfg):
        allowed, value = f.metadata["choices"], getattr(cfg, f.name)
        if allowed is not None and value not in allowed and not (value is None and f.default is None):
            raise AuxgenError(f"unknown {f.name.replace('_', '-')} {value!r}; choose one of {', '.join(allowed)}")


def objective_fields() -> tuple[str, ...]:
    """The options that are terms of the generator's objective (tagged objective=True)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["objective"])


def _check_numbers(cfg: TrainConfig) -> None:
    """Ranges of the numeric options, before anything is loaded or built."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise AuxgenError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
    if cfg.lr <= 0:
        raise AuxgenError(f"--lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise AuxgenError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    for name in ("gen_lr", "weight_decay", "gen_weight_decay", "gamma", "entropy_weight", "aux_weight",
                 "invariance_weight"):
        if getattr(cfg, name) < 0:
            raise AuxgenError(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}")
    if cfg.neighbours < 1:
        raise AuxgenError(f"--neighbours must be at least 1, got {cfg.neighbours}")
    if cfg.meta_every < 1:
        raise AuxgenError(f"--meta-every must be at least 1 (a meta step every N steps), got {cfg.meta_every}")
    if cfg.log_every < 1:
        raise AuxgenError(f"--log-every must be at least 1 (steps between progress lines), got {cfg.log_every}")
    if cfg.cosine_every < 0:
        raise AuxgenError(f"--cosine-every must be 0 (off) or a positive number of steps, got {cfg.cosine_every}")
    if not 0 <= cfg.seed < MAX_SEED:
        raise AuxgenError(f"--seed must be in [0, 2**62), got {cfg.seed}")
    for name in ("width", "gen_width"):
        if getattr(cfg, name) is not None and getattr(cfg, name) > MAX_WIDTH:
            raise AuxgenError(f"--{name.replace('_', '-')} {getattr(cfg, name)} is over the limit of {MAX_WIDTH}")
    if cfg.image_size > MAX_IMAGE_SIZE:
        raise AuxgenError(f"--image-size {cfg.image_size} is over the limit of {MAX_IMAGE_SIZE}")
    if cfg.test_root is not None and cfg.dataset != "imagefolder":
        raise AuxgenError(f"--test-root is for --dataset imagefolder; {cfg.dataset} has its own test split")
    if cfg.psi is not None:
        psi_spec_values(cfg.psi)  # the syntax and per-class limit now, before the data loads


def field_help(name: str) -> str:
    """The help sentence of a config field with its default, for the CLI."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):  # a flag pair: the default is the flag that is on
        default = f"--{'' if default else 'no-'}{name.replace('_', '-')}"
    suffix = "" if default is None or "Default" in f.metadata["help"] else f" [default: {default}]"
    return f.metadata["help"] + suffix


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file (.json or .toml) into a dict of TrainConfig fields.

    Every way the file can be wrong (missing, a folder, unreadable, not UTF-8, not parseable,
    not a table) is an AuxgenError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise AuxgenError(f"config file {path} is a folder, not a file")
    if not path.exists():
        raise AuxgenError(f"config file {path} does not exist")
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read, /dev/zero never end it
        raise AuxgenError(f"config file {path} is not a regular file (a FIFO, socket or device); give a .json "
                          f"or .toml file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AuxgenError(f"config file {path} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from some editors is harmless
    except UnicodeDecodeError as e:
        raise AuxgenError(f"config file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
                          ) from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON (files not named .toml are read as JSON)"
        raise AuxgenError(f"config file {path} is not valid {kind}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise AuxgenError(f"config file {path} must hold a table/object of options")
    if "train" in data:  # a run's config.json keeps the options under "train"
        data = saved_run_options(data["train"])
    if not isinstance(data, dict):
        raise AuxgenError(f"config file {path}: \"train\" must be a table/object of options")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _follow_backbone(data: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """Options a pretrained backbone decides when they were not given: the image size its weights want,
    and the first-order meta-gradient where its layers have no forward-mode AD rule (with a notice).
    A preset's meta_order counts as not given; --meta-order 2 given refuses in validate."""
    backbone = data.get("backbone", TrainConfig.backbone)
    if not isinstance(backbone, str) or ":" not in backbone:
        return data
    entry = backbone_entry(backbone)
    data = dict(data)
    if "image_size" not in given and entry.input_size:
        data["image_size"] = entry.input_size
    if (data.get("method", TrainConfig.method) == "maxl" and "meta_order" not in given
            and data.get("meta_order", TrainConfig.meta_order) == 2 and not entry.forward_ad):
        data["meta_order"] = 1
        print(f"note: --backbone {backbone} has layers without a forward-mode AD rule; training with the "
              f"first-order meta-gradient (--meta-order 1)", file=sys.stderr)
    return data


def resolve_config(file: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file, then the command-line options that were given (not None)."""
    data = load_config_file(file) if file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    preset = data.get("preset")
    if preset is not None:  # defaults < preset < file < flags
        if preset not in PRESETS:
            raise AuxgenError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        file_data = load_config_file(file) if file else {}
        given = {**file_data, **{k: v for k, v in overrides.items() if v is not None}}
        data = {**PRESETS[preset], **given}
    data = _follow_backbone(data, given=set(load_config_file(file) if file else {}) |
                            {k for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(data, where=str(file or "options")).validate()
    # saved runs must find their data and psi file from any working directory
    for name in ("data_root", "test_root", "psi_file", "features_from"):
        if getattr(cfg, name):
            setattr(cfg, name, str(Path(getattr(cfg, name)).expanduser().resolve()))
    if cfg.weights is not None and is_weights_file(cfg.weights):
        cfg.weights = str(Path(cfg.weights).expanduser().resolve())
    return cfg
