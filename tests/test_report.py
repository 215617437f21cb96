"""auxgen report: the page builds from tiny runs, links only its own files, never touches a run,
and refuses what is not a run with one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from auxgen.config import TrainConfig
from auxgen.errors import AuxgenError
from auxgen.report import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _config(method: str) -> TrainConfig:
    # MAXL with its meta-gradient, so the report has a meta curve to draw
    return TrainConfig(dataset="digits", primary_groups=2, backbone="cnn", width=4, epochs=2, batch_size=64,
                       lr=0.05, device="cpu", method=method, meta_weight=1.0, meta_every=1).validate()


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny finished runs on digits in two groups (human fine labels: the digit): maxl and single. Read only."""
    from auxgen.trainer import train

    root = tmp_path_factory.mktemp("report-runs")
    out = {}
    for method in ("maxl", "single"):
        out[method] = root / method
        train(_config(method), out[method], show=False)
    return out


@pytest.fixture(scope="session")
def report_two(runs, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A report of both runs (maxl first), and the maxl run's file hashes from before it was built."""
    before = _tree_hashes(runs["maxl"])
    out = tmp_path_factory.mktemp("reports") / "two"
    build_report([runs["maxl"], runs["single"]], out)
    return out, before


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def _parse(index: Path) -> _Links:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _check_page(out: Path) -> _Links:
    """index.html parses, links only files beside it that exist, and every PNG is a real PNG."""
    parsed = _parse(out / "index.html")
    assert "script" not in parsed.tags  # no JavaScript
    assert parsed.links
    for link in parsed.links:
        assert "/" not in link and ":" not in link and not link.startswith("."), link  # relative, beside index.html
        assert (out / link).is_file(), link
    pngs = sorted(out.glob("*.png"))
    assert pngs
    for p in pngs:
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE), p
    return parsed


def test_two_runs_overlaid(report_two, runs):
    out, before = report_two
    parsed = _check_page(out)
    assert {"curves_accuracy.png", "curves_meta.png", "labels_usage.png", "labels_entropy.png",
            "labels_human.png", "grid_0000.png", "grid_0001.png"} <= set(parsed.links)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "maxl (maxl)" in page and "single (single)" in page
    data = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["maxl", "single"]
    from auxgen.checkpoint import sha256_file
    assert data["runs"][0]["checkpoint_sha256"] == sha256_file(runs["maxl"] / "checkpoints" / "last.pt")
    assert data["runs"][0]["checkpoint_sha256"] in page
    labels = data["labels"]
    assert labels["source"] == "generator" and labels["split"] == "test" and labels["samples"] == 359
    assert 0.0 <= labels["human"]["nmi"] <= 1.0  # digits in groups: the digit is the human label
    assert len(labels["blocks"]) == 2 and all(abs(sum(b["mass"]) - 1) < 1e-4 for b in labels["blocks"])
    # the report only reads the run
    assert _tree_hashes(runs["maxl"]) == before


def test_single_task_run_alone_gives_curves_only(runs, tmp_path):
    before = _tree_hashes(runs["single"])
    result = build_report([runs["single"]], tmp_path / "r")
    parsed = _check_page(tmp_path / "r")
    assert "curves_accuracy.png" in parsed.links and not any(x.startswith("labels_") for x in parsed.links)
    assert not (tmp_path / "r" / "curves_meta.png").exists()  # no meta loss without a generator
    assert any("no label generator" in n for n in result.notes)
    assert _tree_hashes(runs["single"]) == before


def test_labels_from_an_export(runs, tmp_path):
    from auxgen.export import export_labels

    h5 = tmp_path / "labels" / "maxl.h5"
    export_labels(runs["maxl"], h5, "hdf5", split="test", show=False)
    build_report([runs["maxl"]], tmp_path / "r", labels=h5, max_samples=100)
    _check_page(tmp_path / "r")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["labels"]["source"] == "export" and data["labels"]["samples"] == 100
    assert data["labels"]["checkpoint_sha256"] == data["runs"][0]["checkpoint_sha256"]
    assert str(h5.resolve()) in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    other = tmp_path / "other"  # another run: its config.json differs
    shutil.copytree(runs["maxl"], other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    with pytest.raises(AuxgenError, match="exported from another run"):
        build_report([other], tmp_path / "r2", labels=h5)


def test_partly_trained_run_is_reported_with_a_note(runs, tmp_path):
    part = tmp_path / "part"
    shutil.copytree(runs["maxl"], part)
    metrics = part / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
    result = build_report([part], tmp_path / "r", max_samples=50)
    assert any("1 of 2 epochs" in n for n in result.notes)
    assert "1 of 2 epochs" in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")


def test_user_strings_are_escaped(runs, tmp_path):
    odd = tmp_path / "<b>run & co</b>"
    shutil.copytree(runs["maxl"], odd)
    build_report([odd], tmp_path / "r", max_samples=50)
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "<b>run" not in page and "&lt;b&gt;run &amp; co&lt;/b&gt;" in page
    _check_page(tmp_path / "r")


def test_force_replaces_only_its_own_files(runs, tmp_path):
    out = tmp_path / "r"
    build_report([runs["maxl"], runs["single"]], out, max_samples=50)
    assert (out / "curves_meta.png").exists()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(AuxgenError, match="not empty"):
        build_report([runs["single"]], out)
    build_report([runs["single"]], out, force=True)
    assert not (out / "curves_meta.png").exists()  # the earlier report's figure, not this one's
    assert (out / "mine.txt").read_text() == "keep me"
    _check_page(out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(AuxgenError, match="holds no auxgen report"):
        build_report([runs["single"]], foreign, force=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_out_inside_the_run_is_refused(runs):
    before = _tree_hashes(runs["maxl"])
    for out in (runs["maxl"], runs["maxl"] / "report", runs["maxl"] / "checkpoints" / "r"):
        with pytest.raises(AuxgenError, match="inside the run directory"):
            build_report([runs["maxl"]], out)
    assert _tree_hashes(runs["maxl"]) == before and not (runs["maxl"] / "report").exists()


def _broken_copies(runs: dict[str, Path], root: Path) -> dict[str, tuple[Path, str]]:
    """Folders that are not (finished) runs, each with the words its error must say."""
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "photo.png").write_bytes(b"x")
    cases = {"foreign": (foreign, "no config.json"), "missing": (root / "nowhere", "does not exist")}
    for name, remove, says in (("no-marker", ".auxgen-run", "marker"), ("no-metrics", "metrics.jsonl", "metrics.jsonl"),
                               ("no-checkpoint", "checkpoints", "checkpoint")):
        d = root / name
        shutil.copytree(runs["maxl"], d)
        p = d / remove
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        cases[name] = (d, says)
    return cases


def test_not_a_finished_run_is_refused(runs, tmp_path):
    for name, (folder, says) in _broken_copies(runs, tmp_path).items():
        with pytest.raises(AuxgenError, match=says):
            build_report([folder], tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists(), name


@pytest.mark.parametrize("case", ["foreign", "no-checkpoint"])
def test_cli_refuses_with_one_line(runs, tmp_path, case):
    folder, says = _broken_copies(runs, tmp_path)[case]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "auxgen.cli", "report", str(folder), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], p.stderr
    assert not (tmp_path / "r").exists()


def test_cli_builds_a_report(runs, tmp_path):
    from typer.testing import CliRunner

    from auxgen.cli import app

    res = CliRunner().invoke(app, ["report", str(runs["maxl"]), "--out", str(tmp_path / "r"), "--max-samples", "60",
                                   "--examples", "3"])
    assert res.exit_code == 0, res.output
    assert "index.html" in res.output
    _check_page(tmp_path / "r")
