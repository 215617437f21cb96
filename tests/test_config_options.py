"""Options declared once (TrainConfig's fields make the flags), the registries, and no import cycles."""

import ast
import dataclasses
import importlib
import pkgutil
from pathlib import Path

import pytest
import typer

import auxgen
from auxgen.cli import app
from auxgen.config import PRESETS, TrainConfig, objective_fields, resolve_config
from auxgen.data import DATASETS
from auxgen.errors import AuxgenError
from auxgen.models import BACKBONES, make_backbone

FIELDS = dataclasses.fields(TrainConfig)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_config_field_is_a_train_flag(cli, monkeypatch):
    train = typer.main.get_command(app).commands["train"]
    opts = {p.name: p for p in train.params}
    for f in FIELDS:
        assert _flag(f.name) in opts[f.name].opts, f.name
        if f.type in (bool, "bool"):
            assert opts[f.name].secondary_opts == [f"--no-{f.name.replace('_', '-')}"]
        assert opts[f.name].default is None  # an option not given leaves the file's or preset's value
    assert {"out", "resume", "force", "config", "quiet"} <= set(opts)
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no flag is cut short
    code, out, _ = cli("train", "--help")
    assert code == 0
    flags = {word for line in out.splitlines() for word in line.replace("│", " ").split() if word.startswith("--")}
    assert {_flag(f.name) for f in FIELDS} <= flags
    assert "[default: 30]" in " ".join(out.split())  # --epochs shows its default


def test_train_help_is_grouped_short_and_shows_defaults(cli, monkeypatch):
    from auxgen.recipes.options import PANEL_OF, PANELS, full_help, short_help

    assert set(PANEL_OF) == {f.name for f in FIELDS}  # every option has its panel, and only once
    assert sum(len(v) for v in PANELS.values()) == len(FIELDS)
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = cli("train", "--help")
    assert code == 0 and "<bool>" not in out
    text = " ".join(out.replace("│", " ").split())
    for panel in ("Run", *PANELS):
        assert f"╭─ {panel} ─" in out, panel
    for name in ("epochs", "meta_every", "psi", "flip", "backbone"):  # defaults stay shown, also when cut short
        help_ = " ".join(short_help(name).split())
        assert help_ in text and ("[default:" in help_ or "Default" in help_), name
    # the first sentence only: --meta-every's second sentence is in the field, not in --help
    assert "2 halves the generator's cost" not in text and "2 halves the generator's cost" in full_help()
    assert len(out.splitlines()) < 200


def test_a_flag_reaches_the_config(cli, tmp_path):
    code, _, err = cli("train", "--out", tmp_path / "r", "--dataset", "digits", "--backbone", "cnn", "--width", "4",
                       "--epochs", "1", "--batch-size", "32", "--no-flip", "--consistency-weight", "0.5",
                       "--device", "cpu", "-q")
    assert code == 0, err
    cfg = resolve_config(tmp_path / "r" / "config.json", {})
    assert (cfg.flip, cfg.consistency_weight, cfg.width) == (False, 0.5, 4)


def test_presets_set_every_objective_field():
    assert {"meta_weight", "meta_norm", "entropy_weight", "usage_entropy", "sharpness_weight",
            "consistency_weight"} <= set(objective_fields())
    for name, preset in PRESETS.items():
        missing = sorted(set(objective_fields()) - set(preset))
        assert not missing, f"preset {name} leaves {missing} to auxgen's defaults"
    paper = PRESETS["paper"]
    assert (paper["meta_weight"], paper["consistency_weight"], paper["sharpness_weight"]) == (1.0, 0.0, 0.0)
    assert (paper["usage_entropy"], paper["entropy_weight"], paper["meta_norm"]) == ("batch", 0.2, "none")


@pytest.mark.parametrize("field", [f for f in FIELDS if f.metadata["choices"]], ids=lambda f: f.name)
def test_choices_come_from_field_metadata(field):
    needs = {"aux_weighting": {"meta_weight": 1.0}}.get(field.name, {})  # what the last choice needs beside it
    TrainConfig(**{field.name: list(field.metadata["choices"])[-1]}, **needs).validate()
    with pytest.raises(AuxgenError) as e:
        TrainConfig(**{field.name: "nope"}).validate()
    dashed = field.name.replace("_", "-")
    assert str(e.value) == f"unknown {dashed} 'nope'; choose one of {', '.join(field.metadata['choices'])}"


def test_registries_are_the_choices():
    choices = {f.name: f.metadata["choices"] for f in FIELDS}
    assert choices["dataset"] is DATASETS and choices["backbone"] is BACKBONES and choices["preset"] is PRESETS
    for name, entry in BACKBONES.items():
        _, feat = make_backbone(name, 1)
        assert feat > 0 and entry.default_width > 0
    with pytest.raises(AuxgenError, match="unknown backbone 'nope'; choose one of"):
        make_backbone("nope", 3)

    BACKBONES["no-jvp"] = dataclasses.replace(BACKBONES["cnn"], forward_ad=False)  # a new backbone is one entry
    try:
        assert TrainConfig(backbone="no-jvp", meta_order=1).validate().backbone == "no-jvp"
        with pytest.raises(AuxgenError, match="forward-mode AD"):
            TrainConfig(backbone="no-jvp").validate()
    finally:
        del BACKBONES["no-jvp"]


def test_digits_loads_with_its_registered_facts():
    from auxgen.compose import load_data

    data = load_data(TrainConfig(dataset="digits").validate())
    assert data.image_shape[0] == DATASETS["digits"].channels
    assert data.augment == DATASETS["digits"].auto_augment


# ------------------------------------------------------------------------------ import cycles
PACKAGE = Path(auxgen.__file__).parent
COMPONENTS = {"auxgen.config", "auxgen.hierarchy", "auxgen.data", "auxgen.models", "auxgen.compose"}


def _module_files() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The auxgen modules a module imports anywhere in it (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, out = {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while not comp or v not in comp:
                comp.add(stack.pop())
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_imports_and_the_components_form_no_cycle():
    for info in pkgutil.walk_packages([str(PACKAGE)], "auxgen."):
        importlib.import_module(info.name)
    files = _module_files()
    graph = {name: _imports(name, path, set(files)) for name, path in files.items()}
    assert graph["auxgen.data"] >= {"auxgen.hierarchy"}  # the parser sees the imports at all
    assert not ({"auxgen.config", "auxgen.compose"} & (graph["auxgen.data"] | graph["auxgen.hierarchy"]
                                                      | graph["auxgen.models"]))
    tangled = [c for c in _cycles(graph) if c & COMPONENTS]
    assert not tangled, f"import cycles: {tangled}"
