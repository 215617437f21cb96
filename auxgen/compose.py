"""Composition: a run's data, hierarchy and networks from its TrainConfig.

The one module that reads a whole config to build components; data, hierarchy and models take
plain arguments and import nothing of config, so the component modules form no import cycle.
"""

from __future__ import annotations

import dataclasses

import torch

from auxgen.config import TrainConfig
from auxgen.data import DATASETS, Data, DataSpec
from auxgen.data import load_data as load_spec
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy, cifar100_human, human_hierarchy, parse_psi
from auxgen.maxl import LossWeighting
from auxgen.models import LabelGenerator, MultiTaskNet, backbone_norm, is_weights_file


def data_spec(cfg: TrainConfig) -> DataSpec:
    """The data options of a config (DataSpec's fields carry TrainConfig's names)."""
    return DataSpec(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataSpec)})


def load_data(cfg: TrainConfig) -> Data:
    """Load the dataset a config names, as tensors; a missing dataset is an AuxgenError."""
    return load_spec(data_spec(cfg))


def input_paths(cfg: TrainConfig) -> dict[str, str | None]:
    """The files and folders a run reads, by flag (None: not given or not read): what it must not delete."""
    entry = DATASETS.get(cfg.dataset)
    reads_root = entry is not None and (entry.downloads or entry.fitted)  # digits comes with scikit-learn
    return {"--features-from": cfg.features_from, "--psi-file": cfg.psi_file,
            "--weights": cfg.weights if cfg.weights and is_weights_file(cfg.weights) else None,
            "--data-root": cfg.data_root if reads_root else None, "--test-root": cfg.test_root}


def hierarchy_for(cfg: TrainConfig, data: Data) -> tuple[Hierarchy, torch.Tensor | None]:
    """psi of a run, and for --method human the fine-label -> auxiliary-label map.

    Data with a label tree (CIFAR-100, digit groups, two-level ImageFolder) gives the human
    hierarchy; without --psi, MAXL then uses the tree's psi too, so the two compare like for like.
    """
    tree = None
    if data.name == "cifar100":  # its tree has levels: the config picks them
        tree = cifar100_human(cfg.primary_level, cfg.aux_level) if cfg.method == "human" else None
    elif data.fine_parent is not None:
        tree = human_hierarchy(data.fine_parent, data.num_classes)
    if cfg.method == "human":
        if cfg.psi or cfg.psi_file:
            raise AuxgenError("--method human takes psi from the data's label tree; drop --psi/--psi-file")
        if tree is None:
            raise AuxgenError(f"--method human needs fine labels: {_human_sources()}")
        return tree
    if tree is not None and not cfg.psi and not cfg.psi_file:
        return tree[0], None
    return parse_psi(cfg.psi, cfg.psi_file, data.num_classes), None


def _human_sources() -> str:
    """'a, b, or c': the datasets (and options) that give fine labels, from the registry."""
    ways = [d.human for d in DATASETS.values() if d.human]
    return ways[0] if len(ways) == 1 else f"{', '.join(ways[:-1])}, or {ways[-1]}"


# the options whose auto is decided by the images' channels: colour is a nuisance only colour images have

def pair_colour_on(cfg: TrainConfig, channels: int) -> bool:
    """--pair-colour: whether the generator's pair images also change colour (auto: for colour images)."""
    return {"on": True, "off": False, "auto": channels == 3}[cfg.pair_colour]


def generator_sees_shape(cfg: TrainConfig, channels: int) -> bool:
    """--gen-input: whether the generator's input is the images' shape maps (auto: for colour images)."""
    return {"shape": True, "image": False, "auto": channels == 3}[cfg.gen_input]


def thumbnail_match(cfg: TrainConfig, channels: int) -> str:
    """--neighbour-match as auxgen.data.thumbnails takes it: auto is aligned for colour images and shape (on one
    channel, the pixels) for greyscale; features starts from the pixels' neighbours (mined again every epoch)."""
    if cfg.neighbour_match == "auto":
        return "aligned" if channels == 3 else "shape"
    return "pixels" if cfg.neighbour_match == "features" else cfg.neighbour_match


def build_models(cfg: TrainConfig, channels: int, hier: Hierarchy,
                 load_weights: bool = True) -> tuple[MultiTaskNet, LabelGenerator | None]:
    """The multi-task network, and the label generator for --method maxl (else None), for `channels`-channel images.

    A pretrained backbone starts both networks from --weights; load_weights=False builds them without
    (a checkpoint is loaded into them next) but with the normalisation those weights want.
    """
    weights = cfg.weights if load_weights else None
    norm = backbone_norm(cfg.backbone, cfg.weights)
    model = MultiTaskNet(cfg.backbone, channels, hier.num_primary, hier.num_aux, cfg.width, weights, norm)
    gen = (LabelGenerator(cfg.backbone, channels, hier, cfg.gen_width or cfg.width, weights, norm,
                          shape_input=generator_sees_shape(cfg, channels)) if cfg.method == "maxl" else None)
    if gen is not None and cfg.aux_weighting == "learned":  # a part of theta2: its optimiser and checkpoint
        gen.loss_weighting = LossWeighting()
    return model, gen
