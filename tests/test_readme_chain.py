"""The README and the docs pages: their commands chain when run top to bottom (what a snippet or command reads, a
command before it wrote), every `auxgen` command they show parses, the README's quick start runs, and the README
stays a short first page whose links resolve."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_PAGE = ROOT / "docs" / "cli.md"
DOWNSTREAM = ROOT / "docs" / "downstream.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _commands(text: str, verb: str | None = None) -> list[list[str]]:
    """The `auxgen VERB ...` command lines of a page's bash blocks, as argument lists (comments dropped)."""
    out = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():  # a command continued over lines is one
            words = shlex.split(line, comments=True)
            if words[:1] == ["auxgen"] and len(words) > 1 and (verb is None or words[1] == verb):
                out.append(words)
    return out


def _value(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def _written(text: str) -> set[str]:
    """Every path a page's train and export commands write: runs, exports, generator files."""
    made = {_value(w, "--out") for w in _commands(text, "train")}
    for w in _commands(text, "export"):
        out = _value(w, "--out")
        made.add(out)
        if "--generator" in w:  # docs/format.md: beside an HDF5 file, inside a shard or parquet folder
            sep = "." if out.endswith(".h5") else "/"
            made |= {f"{out}{sep}generator.pt2", f"{out}{sep}generator.onnx"}
    return made


@pytest.mark.parametrize("page", [README, CLI_PAGE], ids=lambda p: p.name)
def test_no_two_export_commands_write_the_same_out(page):
    outs = [_value(w, "--out") for w in _commands(_text(page), "export")]
    assert outs and len(outs) == len(set(outs)), outs


@pytest.mark.parametrize("page", [README, CLI_PAGE], ids=lambda p: p.name)
def test_what_the_commands_read_was_written_before(page):
    text = _text(page)
    made = _written(text)
    for verb in ("export", "report", "verify"):
        for w in _commands(text, verb):
            for arg in w[2:]:
                if arg.startswith(("runs/", "labels/", "shards/")) and arg != _value(w, "--out"):
                    assert arg in made, (verb, arg)


def test_what_the_downstream_snippets_read_the_command_page_wrote():
    doc = _text(DOWNSTREAM)
    read = set(re.findall(r'"((?:labels|shards)/[^"]+)"', "".join(_blocks(doc, "python"))))
    assert read and read <= _written(_text(CLI_PAGE)), read - _written(_text(CLI_PAGE))
    assert "generator.pt\"" not in doc and "TorchScript generator" not in doc


def test_every_documented_command_parses(monkeypatch):
    """Each `auxgen VERB ...` line of the README and docs/ names options that exist, with values of their type."""
    import typer

    from auxgen.cli import app

    monkeypatch.chdir(ROOT)  # a --config FILE shown is the repository's
    group = typer.main.get_command(app)
    shown = 0
    for page in PAGES:
        for words in _commands(_text(page)):
            if "..." in words:  # an elided command line, not meant to run
                continue
            command = group.commands[words[1]]
            command.make_context(words[1], words[2:])  # a click UsageError names the page's bad option
            shown += 1
    assert shown > 20


def _quick(words: list[str]) -> list[str]:
    """A README command at test size: one epoch, a narrow network, one retraining epoch over 2 seeds."""
    sizes = {"--epochs": "1", "--retrain": "1", "--seeds": "2"}
    words = [sizes.get(words[i - 1], w) if i else w for i, w in enumerate(words)]
    if words[1] == "train":
        words += ["--width", "4"] + ([] if "--epochs" in words else ["--epochs", "1"])
    return words[1:]


def test_the_readme_quick_start_runs(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    commands = [w for w in _commands(_text(README)) if "..." not in w]
    assert [w[1] for w in commands] == ["train", "export", "verify", "report"]
    for words in commands:
        code, out, err = cli(*_quick(words))
        assert code == 0, (words, out[-2000:], err[-2000:])
    assert (tmp_path / "labels" / "digits.h5.generator.onnx").is_file()
    assert (tmp_path / "reports" / "digits" / "index.html").is_file()


def test_the_readme_is_a_short_first_page_whose_links_resolve():
    text = _text(README)
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text  # they do all set-up on a fresh machine
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and [link for link in links if not (ROOT / link).exists()] == []
