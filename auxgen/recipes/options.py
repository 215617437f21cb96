"""Command-line options made from TrainConfig's fields, so an option is declared once (a field)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

import typer
from rich.markup import escape

from auxgen.config import TrainConfig, field_help, field_types

F = TypeVar("F", bound=Callable[..., Any])


def config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per TrainConfig field: `--name-with-dashes` (bools `--x/--no-x`).

    Every default is None, so the command can tell a flag that was given from one that was not
    (resolve_config layers defaults < preset < file < flags).
    """
    types = field_types()
    out = []
    for f in fields(TrainConfig):
        kind = next(t for t in types[f.name] if t is not type(None))  # `int | None` is an int option
        flag = f"--{f.name.replace('_', '-')}"
        decls = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        # rich would read "[default: x]" as markup and drop it; a flag pair needs no "<bool>" type shown
        option = typer.Option(None, decls, help=escape(field_help(f.name)), show_default=False,
                              metavar="" if kind is bool else None)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    return out


def with_config_options(command: F) -> F:
    """Give `command(<its own options>, **options)` a flag for every TrainConfig field.

    Typer reads a command's options from its signature; this one is the command's own
    parameters followed by the config's, and typer passes the config's values in `options`.
    """
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = sig.replace(parameters=[*own, *config_parameters()])  # type: ignore[attr-defined]
    return command
