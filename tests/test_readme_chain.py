"""The README's commands chain when run top to bottom: what a snippet reads, a command before it wrote."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _commands(verb: str) -> list[list[str]]:
    """The README's `auxgen VERB ...` command lines, as argument lists (comments dropped)."""
    out = []
    for block in _blocks(README, "bash"):
        for line in block.replace("\\\n", " ").splitlines():  # a command continued over lines is one
            words = shlex.split(line, comments=True)
            if words[:2] == ["auxgen", verb]:
                out.append(words)
    return out


def _value(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def _written() -> set[str]:
    """Every path the README's train and export commands write: runs, exports, generator files."""
    made = {_value(w, "--out") for w in _commands("train")}
    for w in _commands("export"):
        out = _value(w, "--out")
        made.add(out)
        if "--generator" in w:  # docs/format.md: beside an HDF5 file, inside a shard or parquet folder
            sep = "." if out.endswith(".h5") else "/"
            made |= {f"{out}{sep}generator.pt2", f"{out}{sep}generator.onnx"}
    return made


def test_no_two_export_commands_write_the_same_out():
    outs = [_value(w, "--out") for w in _commands("export")]
    assert len(outs) == len(set(outs)), outs


def test_what_the_snippets_and_commands_read_was_written_before():
    made = _written()
    section = README[README.index("## Use the labels in your own training"):README.index("## Development")]
    read = set(re.findall(r'"((?:labels|shards)/[^"]+)"', "".join(_blocks(section, "python"))))
    assert read and read <= made, read - made
    for verb in ("export", "report", "verify"):
        for w in _commands(verb):
            for arg in w[2:]:
                if arg.startswith(("runs/", "labels/", "shards/")) and arg not in (_value(w, "--out"),):
                    assert arg in made, (verb, arg)


def test_downstream_doc_is_the_readme_section():
    doc = (ROOT / "docs" / "downstream.md").read_text(encoding="utf-8")
    section = README[README.index("## Use the labels in your own training"):README.index("## Development")]
    assert _blocks(doc, "python") == _blocks(section, "python")
    assert "generator.pt\"" not in doc and "TorchScript generator" not in doc
