"""Command-line options made from TrainConfig's fields, so an option is declared once (a field)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

import typer
from rich.markup import escape

from auxgen.config import TrainConfig, field_help, field_types

F = TypeVar("F", bound=Callable[..., Any])

# `auxgen train --help` groups the ~60 config flags in panels, in this order; the one place a field's panel is
# chosen (tests check every field has one, so a new field cannot fall into an unnamed heap)
RUN_PANEL = "Run"
PANELS: dict[str, tuple[str, ...]] = {
    "Data": ("dataset", "data_root", "test_root", "download", "image_size", "primary_level", "aux_level",
             "primary_groups", "hierarchy_depth", "image_column", "label_column", "fine_column", "augment", "flip"),
    "Method and labels": ("preset", "method", "psi", "psi_file", "features_from"),
    "Networks": ("backbone", "weights", "width", "gen_width"),
    "Training": ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "warmup_epochs",
                 "aux_weight", "val_split", "eval_batch_size", "seed"),
    "Generator": ("gen_input", "gen_lr", "gen_weight_decay", "gen_decay", "gen_optimizer", "meta_every"),
    "Generator objective": ("gamma", "entropy_weight", "usage_entropy", "sharpness_weight", "consistency_weight",
                            "invariance_weight", "pairs", "neighbours", "neighbour_match", "pair_colour"),
    "Meta-gradient": ("meta_weight", "meta_order", "meta_norm", "meta_split", "schedule", "fused_lookahead",
                      "hypergradient", "neumann_steps", "aux_weighting"),
    "Device": ("device", "precision", "sync_bn"),
    "Logging": ("log", "log_every", "cosine_every"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}

# a sentence ends at ". " before a capital letter, not after an abbreviation
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])")


def short_help(name: str) -> str:
    """A field's help as `--help` shows it: its first sentence (up to its first aside after a top-level "; ",
    unless that clause explains another choice, "WORD: ..."), any sentence saying its default, and the
    default; the whole text stays in the field's metadata (`field_help`, `python -m auxgen.recipes.options`)."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    sentences = _SENTENCE_END.split(field_help(name))
    # a field with choices keeps its sentence whole: its clauses explain the choices
    first = sentences[0] if f.metadata["choices"] else _first_clause(sentences[0])
    default = [t for t in sentences[1:] if t.startswith("Default")]
    if first != sentences[0] and "[default:" in sentences[0]:
        default.append(sentences[0][sentences[0].rindex(" [default:") + 1:])
    return " ".join([first + ("." if default and not first.endswith(".") else ""), *default])


_CHOICE = re.compile(r"[\w-]+: ")


def _first_clause(text: str) -> str:
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == ";" and depth == 0 and text[i + 1:i + 2] == " " and not _CHOICE.match(text, i + 2):
            return text[:i]
    return text


def config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per TrainConfig field: `--name-with-dashes` (bools `--x/--no-x`).

    Every default is None, so the command can tell a flag that was given from one that was not
    (resolve_config layers defaults < preset < file < flags).
    """
    types = field_types()
    out = []
    order = list(PANELS)  # typer shows the panels in the order their first option comes
    for f in sorted(fields(TrainConfig), key=lambda f: _place(f.name, order)):
        kind = next(t for t in types[f.name] if t is not type(None))  # `int | None` is an int option
        flag = f"--{f.name.replace('_', '-')}"
        decls = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        # rich would read "[default: x]" as markup and drop it; a flag pair needs no "<bool>" type shown
        option = typer.Option(None, decls, help=escape(short_help(f.name)), show_default=False,
                              metavar="" if kind is bool else None, rich_help_panel=PANEL_OF.get(f.name, "Other"))
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    return out


def _place(name: str, order: list[str]) -> tuple[int, int]:
    panel = PANEL_OF.get(name)
    return (order.index(panel), PANELS[panel].index(name)) if panel else (len(order), 0)


def full_help() -> str:
    """Every train option with its whole description, panel by panel (`python -m auxgen.recipes.options`)."""
    lines = []
    for panel, names in PANELS.items():
        lines += ["", f"{panel}:"]
        lines += [f"  --{n.replace('_', '-')}: {field_help(n)}" for n in names]
    return "\n".join(lines[1:])


def with_config_options(command: F) -> F:
    """Give `command(<its own options>, **options)` a flag for every TrainConfig field.

    Typer reads a command's options from its signature; this one is the command's own
    parameters followed by the config's, and typer passes the config's values in `options`.
    """
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = sig.replace(parameters=[*own, *config_parameters()])  # type: ignore[attr-defined]
    return command


if __name__ == "__main__":
    print(full_help())
