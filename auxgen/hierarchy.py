"""The hierarchy psi: how many auxiliary classes each primary class owns.

This module is the one place for psi and its block layout, and for the built-in CIFAR-100
four-level hierarchy (3 / 10 / 20 / 100 classes) of the MAXL paper.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from auxgen.errors import AuxgenError


@dataclass(frozen=True)
class Hierarchy:
    """psi[i] auxiliary classes for primary class i, laid out as contiguous blocks."""

    psi: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.psi) == 0:
            raise AuxgenError("psi is empty: give one positive integer per primary class")
        if any((not isinstance(n, int)) or n < 1 for n in self.psi):
            raise AuxgenError(f"psi must hold positive integers, got {list(self.psi)}")

    @property
    def num_primary(self) -> int:
        return len(self.psi)

    @property
    def num_aux(self) -> int:
        return sum(self.psi)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each block; block i is [offsets[i], offsets[i] + psi[i])."""
        out, acc = [], 0
        for n in self.psi:
            out.append(acc)
            acc += n
        return tuple(out)

    def block_id(self) -> torch.Tensor:
        """A length-K tensor: the primary class that owns each auxiliary class."""
        return torch.repeat_interleave(torch.arange(self.num_primary), torch.tensor(self.psi))

    def mask(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean [B, K] mask, True on the block of each sample's primary class."""
        return self.block_id().to(y.device)[None, :] == y[:, None]


# Caps on psi: each auxiliary class is an output unit of both networks and a column of every
# exported label, so an unchecked `--psi 100000` silently makes checkpoints of hundreds of MB
# and runs many times slower. The MAXL paper uses up to 5 per class (100 in all).
MAX_PSI_PER_CLASS = 1000
MAX_AUX_CLASSES = 10000
DEFAULT_PSI = 5
_PSI_ITEM = re.compile(r"[+-]?[0-9]+", re.ASCII)


def psi_spec_values(spec: str | None) -> list[int]:
    """The integers of a `--psi` spec ('5' or '2,3,4'); None is the default psi.

    Every item must be an integer in [1, MAX_PSI_PER_CLASS]: an empty spec or an empty item
    ('2,,3', '2,3,') is an error rather than silently the default or a shorter list.
    """
    if spec is None:
        return [DEFAULT_PSI]
    text = spec.strip()
    if not text:
        raise AuxgenError("--psi is empty: give an integer ('5') or one per primary class ('2,3,4'), "
                          f"or drop it for the default {DEFAULT_PSI}")
    items = [v.strip() for v in text.split(",")]
    if any(not v for v in items):
        raise AuxgenError(f"--psi {text!r} has an empty item; give one integer per primary class, e.g. '2,3,4'")
    bad = next((v for v in items if not _PSI_ITEM.fullmatch(v)), None)
    if bad is not None:
        raise AuxgenError(f"--psi {text!r}: {bad!r} is not an integer; expected an integer or a "
                          f"comma-separated list")
    values = [int(v) for v in items]
    _check_psi_entries(values, "--psi")
    return values


def _check_psi_entries(values: list, where: str) -> None:
    """Positive integers (not bools) no larger than MAX_PSI_PER_CLASS; names the first bad entry only."""
    for i, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise AuxgenError(f"{where}: psi entries must be positive integers (>= 1); entry {i + 1} is {v!r}")
        if v > MAX_PSI_PER_CLASS:
            raise AuxgenError(f"{where}: psi entry {i + 1} is {v}, over the limit of {MAX_PSI_PER_CLASS} "
                              f"auxiliary classes per primary class")


def _read_psi_file(path: Path) -> list:
    if path.is_dir():
        raise AuxgenError(f"psi file {path} is a folder, not a JSON file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AuxgenError(f"psi file {path} does not exist") from None
    except OSError as e:
        raise AuxgenError(f"psi file {path} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise AuxgenError(f"psi file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          f"expected JSON") from None
    except json.JSONDecodeError as e:
        raise AuxgenError(f"psi file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    values = data.get("psi") if isinstance(data, dict) else data
    if not isinstance(values, list):
        raise AuxgenError(f"psi file {path} must hold a list of integers or {{\"psi\": [...]}}")
    _check_psi_entries(values, f"psi file {path}")
    return values


def parse_psi(spec: str | None, psi_file: str | Path | None, num_primary: int) -> Hierarchy:
    """Build psi from `--psi 5` (uniform), `--psi 2,3,4` (per class) or a JSON file.

    The JSON file holds either a list `[2, 3, 4]` or an object `{"psi": [2, 3, 4]}`. Each entry
    is at most MAX_PSI_PER_CLASS and all together at most MAX_AUX_CLASSES.
    """
    if spec is not None and psi_file is not None:
        raise AuxgenError("give --psi or --psi-file, not both")
    if psi_file is not None:
        values = _read_psi_file(Path(psi_file))
    else:
        values = psi_spec_values(spec)
        if len(values) == 1:
            values = values * num_primary
    if len(values) != num_primary:
        raise AuxgenError(
            f"psi has {len(values)} entries but the dataset has {num_primary} primary classes"
        )
    if sum(values) > MAX_AUX_CLASSES:
        raise AuxgenError(f"psi gives {sum(values)} auxiliary classes in all ({num_primary} primary classes), "
                          f"over the limit of {MAX_AUX_CLASSES}; use a smaller --psi")
    return Hierarchy(tuple(values))


# ----------------------------------------------------------------------------------------
# CIFAR-100: 20 coarse classes of 5 fine classes each (the dataset's own), and the paper's
# 10-class and 3-class levels over the coarse classes. Fine labels are the alphabetical
# order of the fine names, as in the dataset; everything else is derived from these tables.
CIFAR100_COARSE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    ("fruit_and_vegetables", ("apple", "mushroom", "orange", "pear", "sweet_pepper")),
    ("household_electrical_devices", ("clock", "keyboard", "lamp", "telephone", "television")),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    ("large_man-made_outdoor_things", ("bridge", "castle", "house", "road", "skyscraper")),
    ("large_natural_outdoor_scenes", ("cloud", "forest", "mountain", "plain", "sea")),
    ("large_omnivores_and_herbivores", ("camel", "cattle", "chimpanzee", "elephant", "kangaroo")),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    ("non-insect_invertebrates", ("crab", "lobster", "snail", "spider", "worm")),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    ("trees", ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree")),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)

# level 10 -> coarse classes it groups; level 3 -> level-10 classes it groups (maxl.md table)
CIFAR100_LEVEL10: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("large_animals", ("reptiles", "large_carnivores", "large_omnivores_and_herbivores")),
    ("medium_animals", ("aquatic_mammals", "medium_mammals")),
    ("small_animals", ("small_mammals", "fish")),
    ("invertebrates", ("insects", "non-insect_invertebrates")),
    ("people", ("people",)),
    ("vegetations", ("flowers", "fruit_and_vegetables", "trees")),
    ("household_objects", ("food_containers", "household_electrical_devices",
                           "household_furniture")),
    ("construction", ("large_man-made_outdoor_things",)),
    ("natural_scenes", ("large_natural_outdoor_scenes",)),
    ("vehicles", ("vehicles_1", "vehicles_2")),
)
CIFAR100_LEVEL3: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("animals", ("large_animals", "medium_animals", "small_animals", "invertebrates", "people")),
    ("vegetations", ("vegetations",)),
    ("objects_and_scenes", ("household_objects", "construction", "natural_scenes", "vehicles")),
)
CIFAR100_LEVELS = (3, 10, 20, 100)

CIFAR100_FINE_NAMES: tuple[str, ...] = tuple(sorted(f for _, fs in CIFAR100_COARSE for f in fs))


def cifar100_names(level: int) -> tuple[str, ...]:
    """Class names at a level of the CIFAR-100 hierarchy, in label order."""
    table = {3: CIFAR100_LEVEL3, 10: CIFAR100_LEVEL10, 20: CIFAR100_COARSE}
    if level == 100:
        return CIFAR100_FINE_NAMES
    _check_level(level)
    return tuple(name for name, _ in table[level])


def cifar100_fine_to(level: int) -> torch.Tensor:
    """Map fine labels (0..99) to labels at `level` (3, 10, 20 or 100): a length-100 tensor."""
    _check_level(level)
    fine_to_coarse = {f: i for i, (_, fs) in enumerate(CIFAR100_COARSE) for f in fs}
    coarse_index = {name: i for i, (name, _) in enumerate(CIFAR100_COARSE)}
    coarse_to_10 = {coarse_index[c]: i for i, (_, cs) in enumerate(CIFAR100_LEVEL10) for c in cs}
    l10_index = {name: i for i, (name, _) in enumerate(CIFAR100_LEVEL10)}
    l10_to_3 = {l10_index[c]: i for i, (_, cs) in enumerate(CIFAR100_LEVEL3) for c in cs}
    out = []
    for name in CIFAR100_FINE_NAMES:
        c = fine_to_coarse[name]
        out.append({100: CIFAR100_FINE_NAMES.index(name), 20: c, 10: coarse_to_10[c],
                    3: l10_to_3[coarse_to_10[c]]}[level])
    return torch.tensor(out, dtype=torch.long)


def cifar100_human(primary_level: int, aux_level: int) -> tuple[Hierarchy, torch.Tensor]:
    """The human hierarchy for a (primary, auxiliary) pair of levels.

    Returns psi (how many aux-level classes lie under each primary class) and a length-100
    map from fine labels to auxiliary labels re-indexed into psi's contiguous blocks.
    """
    _check_level(primary_level)
    _check_level(aux_level)
    if aux_level <= primary_level:
        raise AuxgenError(
            f"--aux-level {aux_level} must be finer than --primary-level {primary_level}"
        )
    to_pri, to_aux = cifar100_fine_to(primary_level), cifar100_fine_to(aux_level)
    children: list[list[int]] = [[] for _ in range(primary_level)]
    for p, a in sorted(set(zip(to_pri.tolist(), to_aux.tolist(), strict=True))):
        children[p].append(a)
    hier = Hierarchy(tuple(len(c) for c in children))
    local = {a: hier.offsets[p] + r for p, cs in enumerate(children) for r, a in enumerate(cs)}
    return hier, torch.tensor([local[a] for a in to_aux.tolist()], dtype=torch.long)


def _check_level(level: int) -> None:
    if level not in CIFAR100_LEVELS:
        raise AuxgenError(f"CIFAR-100 level must be one of 3, 10, 20, 100; got {level}")


# ----------------------------------------------------------------------------------------
# Two-level label trees, and fixed auxiliary labels drawn from a hierarchy (a run's hierarchy is
# composed in auxgen.compose).
def human_hierarchy(fine_parent: list[int] | tuple[int, ...], num_primary: int) -> tuple[Hierarchy, torch.Tensor]:
    """psi and the fine -> auxiliary map of a two-level label tree.

    `fine_parent[f]` is the primary class of fine class f. psi[i] counts the fine classes
    under primary class i; fine classes keep their order inside each block.
    """
    children: list[list[int]] = [[] for _ in range(num_primary)]
    for f, p in enumerate(fine_parent):
        children[p].append(f)
    empty = [i for i, c in enumerate(children) if not c]
    if empty:
        raise AuxgenError(f"primary classes {empty} have no fine classes under them; every primary class "
                          f"needs at least one for --method human")
    hier = Hierarchy(tuple(len(c) for c in children))
    local = {f: hier.offsets[p] + r for p, cs in enumerate(children) for r, f in enumerate(cs)}
    return hier, torch.tensor([local[f] for f in range(len(fine_parent))], dtype=torch.long)


def random_labels(hier: Hierarchy, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One auxiliary class per sample, uniform inside its primary class's block, drawn once from `generator`."""
    draw = torch.rand(len(labels), generator=generator)
    psi = torch.tensor(hier.psi)
    return torch.tensor(hier.offsets)[labels] + (draw * psi[labels]).long()
