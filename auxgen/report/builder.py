"""`auxgen report`: build the page and its figures in memory, then write them into --out.

The report only reads runs and exports. Everything is computed before the first file is
written, so a failure leaves --out as it was; the files are written atomically, the list of
them first (`.auxgen-report`), so --force later removes exactly those files and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import auxgen
from auxgen.checkpoint import atomic_write, write_text_atomic
from auxgen.errors import AuxgenError, CheckpointError
from auxgen.paths import refuse_inside, refuse_under_file
from auxgen.report import figures as F
from auxgen.report.labels import (
    Analysis,
    Labels,
    analyse,
    confident_examples,
    labels_from_export,
    labels_from_generator,
)
from auxgen.report.page import Page, box, esc, figure, fmt, kv_table, pct, table
from auxgen.report.runs import RunInfo, name_runs, read_run

REPORT_MARKER = ".auxgen-report"  # lists the files a report wrote: all that --force may remove
REPORT_MODE = 0o644               # a page meant to be opened and shared, unlike the private run files
MAX_GRID_BLOCKS = 30              # image grids for at most this many primary classes (a page, not a catalogue)


@dataclass
class ReportResult:
    """What `build_report` wrote and found."""

    out: Path
    index: Path
    files: list[str]
    warnings: list[str]
    notes: list[str]


def _image_folders(infos: list[RunInfo], data_root: str | None) -> list[str]:
    """The ImageFolder trees of the runs: a folder written inside one becomes a class of its data."""
    roots = []
    for r in infos:
        if r.train_cfg.get("dataset") == "imagefolder":
            roots += [str(x) for x in (r.train_cfg.get("data_root"), r.train_cfg.get("test_root")) if x]
    return roots + ([data_root] if data_root and roots else [])


def check_out(out: Path, runs: list[Path], labels: Path | None, force: bool, data_roots: list[str] = ()) -> None:
    """Refuse an --out inside a run, an export or an ImageFolder tree, a file, or a non-empty folder that is no
    earlier report."""
    target = out.resolve()
    refuse_inside(out, runs, "--out", "the run directory", "a report never writes into a run")
    refuse_inside(out, [labels], "--out", "the export")
    refuse_inside(out, data_roots, "--out", "the ImageFolder tree",
                  "its PNG figures would become a class of the data")
    refuse_under_file(out, "--out")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise AuxgenError(f"--out {out} is not empty; pass --force to replace an earlier report there")
        if not (target / REPORT_MARKER).is_file():
            raise AuxgenError(f"--out {out} is not empty and holds no auxgen report (no {REPORT_MARKER} file); "
                              f"refusing to replace its files even with --force")


def _previous_files(out: Path) -> list[str]:
    """The files an earlier report at `out` listed: plain names inside `out` only, whatever the list says."""
    try:
        listed = json.loads((out / REPORT_MARKER).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in listed if isinstance(n, str) and n and "/" not in n and "\\" not in n
            and n not in (".", "..") and n != REPORT_MARKER]


def build_report(runs: list[str | Path], out: str | Path, labels: str | Path | None = None,
                 checkpoint: str = "last", split: str = "test", max_samples: int = 5000, seed: int = 0,
                 device: str | None = None, data_root: str | None = None, force: bool = False,
                 examples: int = 8, command: str | None = None) -> ReportResult:
    """Write index.html, its PNG figures and report.json into `out` for one or more runs (the first run's labels)."""
    if not runs:
        raise AuxgenError("give at least one run directory")
    if split not in ("train", "test"):
        raise AuxgenError(f"--split must be train or test, not {split!r}")
    if max_samples < 1:
        raise AuxgenError("--max-samples must be at least 1")
    out = Path(out)
    run_paths = [Path(r) for r in runs]
    labels_path = None if labels is None else Path(labels)
    # a checkpoint file names one run's checkpoint: the first run's; the others are described by their last
    # (best is chosen on the test split, so it is only ever taken when asked for)
    others = checkpoint if checkpoint in ("best", "last") else "last"
    infos = [read_run(r, checkpoint if i == 0 else others) for i, r in enumerate(run_paths)]
    check_out(out, run_paths, labels_path, force, _image_folders(infos, data_root))
    name_runs(infos)

    warnings, notes = _run_notes(infos)

    figs = F.curve_figures(infos)
    first = infos[0]
    lab: Labels | None = None
    an: Analysis | None = None
    grid_figs: list[F.Fig] = []
    label_figs: list[F.Fig] = []
    human_fig: F.Fig | None = None
    if labels_path is not None and not first.has_generator:
        raise AuxgenError(f"--labels describes the first run, and {first.run_dir} is a {first.method} run "
                          f"(no generator); put the maxl run first")
    if first.has_generator:
        if labels_path is not None:  # the export was asked for by name: anything wrong with it is an error
            lab = labels_from_export(labels_path, first, split, max_samples, seed, data_root)
        else:
            try:
                lab = labels_from_generator(first, checkpoint, split, max_samples, seed, device, data_root)
            except CheckpointError:  # the checkpoint asked for is unusable: no dataset hint fixes that
                raise
            except AuxgenError as e:  # e.g. the dataset is on another machine: the curves still stand
                warnings.append(f"{first.name}: labels not shown: {e} (--data-root names the dataset's new place; "
                                f"--labels EXPORT shows an export's labels instead)")
        if lab is not None:
            notes += [f"{first.name} labels: {n}" for n in lab.notes]
            an = analyse(lab, seed)
            warnings += [f"{first.name} labels: {w}" for w in an.warnings]
            label_figs, human_fig, grid_figs = _label_figures(lab, an, examples)
    else:
        notes.append(f"{first.name} is a {first.method} run: it has no label generator, so the report shows "
                     f"training curves only (put a maxl run first to see its labels)")

    all_figs = figs + label_figs + ([human_fig] if human_fig else []) + grid_figs
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = _page(infos, lab, an, figs, label_figs, human_fig, grid_figs, warnings, notes, created, command)
    data = _summary(infos, lab, an, warnings, notes, created)
    files = {f"{f.name}.png": f.png for f in all_figs}
    files["report.json"] = (json.dumps(data, indent=2) + "\n").encode()
    files["index.html"] = page.encode("utf-8")
    _write(out, files)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return ReportResult(out, out / "index.html", sorted(files), warnings, notes)


def _run_notes(infos: list) -> tuple[list[str], list[str]]:
    """The warnings of each run's last training epoch and the notes of reading it, each named by its run."""
    warnings: list[str] = []
    notes: list[str] = []
    for r in infos:
        notes += [f"{r.name}: {n}" for n in r.notes]
        last = r.history[-1]
        for w in last.get("warnings") or []:
            warnings.append(f"{r.name} (training, epoch {last.get('epoch', len(r.history))}): {w}")
    return warnings, notes


def _label_figures(lab: Labels, an: Analysis, examples: int) -> tuple[list[F.Fig], F.Fig | None, list[F.Fig]]:
    """Usage and entropy figures, the fine-label figure where the data has fine labels, and per-block image grids
    of each block's most and least confident examples where the images are at hand."""
    human_fig = F.human_figure(an.human, lab.fine_names) if an.human is not None else None
    grid_figs = []
    if lab.images is not None:
        top, low = examples, max(1, examples // 2)
        grid_figs = [F.grid_figure(lab, b, confident_examples(lab, b, top, low), top, low)
                     for b in an.blocks[:MAX_GRID_BLOCKS] if b.n]
    return [F.usage_figure(an), F.entropy_figure(an)], human_fig, grid_figs


def _write(out: Path, files: dict[str, bytes]) -> None:
    """Replace an earlier report's files with these: all are written in a staging folder inside `out` first,
    so a failure (a full disk) leaves `out` as it was; then the list, the renames (index.html last), the list."""
    old = _previous_files(out) if (out / REPORT_MARKER).is_file() else []
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".auxgen-report.*.tmp"):  # a killed report's staging folder
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".auxgen-report.", suffix=".tmp", dir=out))
    except OSError as e:
        raise AuxgenError(f"--out {out} cannot be created ({e.strerror})") from None
    try:
        for n, data in files.items():
            atomic_write(staging / n, lambda tmp, data=data: Path(tmp).write_bytes(data), REPORT_MODE)
        names = sorted(set(files) | set(old))  # until the old ones are gone, they are still this report's
        marker = {"format": "auxgen-report", "auxgen_version": auxgen.__version__, "files": names}
        write_text_atomic(out / REPORT_MARKER, json.dumps(marker, indent=2) + "\n", REPORT_MODE)
    except (AuxgenError, OSError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise AuxgenError(f"{e}; the report was not written ({out} is as it was)") from None
    for n in old:
        if n not in files:
            p = out / n
            if p.is_file() and not p.is_symlink():
                p.unlink()
    for n in sorted(files, key=lambda n: n == "index.html"):  # the page last: it links the others
        os.replace(staging / n, out / n)  # a rename needs no space
    staging.rmdir()
    marker["files"] = sorted(files)
    write_text_atomic(out / REPORT_MARKER, json.dumps(marker, indent=2) + "\n", REPORT_MODE)


def _acc(r: RunInfo) -> tuple[Any, Any, Any]:
    accs = [(row.get("test_acc"), row.get("epoch", i + 1)) for i, row in enumerate(r.history)
            if isinstance(row.get("test_acc"), (int, float))]
    if not accs:
        return None, None, None
    best = max(accs, key=lambda a: a[0])
    return accs[-1][0], best[0], best[1]


def _psi_text(psi: Any) -> str:
    if not isinstance(psi, list) or not psi:
        return "–"
    return f"{psi[0]} per class" if len(set(psi)) == 1 else ", ".join(map(str, psi[:12])) + (" …" if len(psi) > 12
                                                                                               else "")


def _page(infos: list[RunInfo], lab: Labels | None, an: Analysis | None, curves: list[F.Fig],
          label_figs: list[F.Fig], human_fig: F.Fig | None, grids: list[F.Fig], warnings: list[str],
          notes: list[str], created: str, command: str | None) -> str:
    first = infos[0]
    what = ", ".join(r.label for r in infos)
    page = Page(f"auxgen report: {what}", esc(what),
                f"auxgen {esc(auxgen.__version__)}, written {esc(created)}"
                + (f" by <code>{esc(command)}</code>" if command else "")
                + ". Everything here was read from the run directories and export named above; nothing was trained.")
    if warnings:
        page.add(box("warn", "Warnings", warnings))
    elif an is not None:
        page.add('<div class="box ok"><strong>No collapse or near-uniform labels found.</strong></div>')
    page.add(box("note", "Notes", notes))

    _runs_section(page, infos)
    page.section("Training curves", "From each run's metrics.jsonl, by epoch. Colour names the run; where a "
                 "panel shows two quantities, the line style names them (see each legend).")
    page.add('<div class="grid">' + "".join(figure(f) for f in curves) + "</div>")

    if lab is not None and an is not None:
        _labels_section(page, first, lab, an, label_figs, human_fig, grids)
    return page.render()


def _runs_section(page: Page, infos: list[RunInfo]) -> None:
    """One row per run (method, data, psi, epochs, accuracy), then where each run and checkpoint is."""
    page.section("Runs")
    rows = []
    for r in infos:
        final, best, best_epoch = _acc(r)
        t = r.train_cfg
        rows.append([esc(r.name), esc(r.method), esc(t.get("dataset", "?")), esc(t.get("backbone", "?")),
                     esc(_psi_text(r.meta.get("psi"))),
                     f"{len(r.history)}" + (f" of {r.epochs_planned}" if not r.finished else ""),
                     pct(final), f"{pct(best)} (epoch {esc(best_epoch)})" if best is not None else "–"])
    page.add(table(["run", "method", "dataset", "backbone", "ψ", "epochs", "final test acc",
                    "best test acc"], rows))
    page.add(kv_table([(f"{r.name}", f'<span class="mono">{esc(r.run_dir.resolve())}</span><br>checkpoint '
                        f'<span class="mono">{esc(r.checkpoint_path.resolve())}</span><br>sha256 '
                        f'<span class="mono">{esc(r.checkpoint_sha256)}</span>') for r in infos]))



def _labels_section(page: Page, first: RunInfo, lab: Labels, an: Analysis, label_figs: list[F.Fig],
                    human_fig: F.Fig | None, grids: list[F.Fig]) -> None:
    """The first run's labels: their source and statistics, the fine-label comparison, the image grids."""
    page.section(f"Auxiliary labels of {first.name}")
    page.add(kv_table(_label_source(first, lab)))
    s = an.stats
    page.add(kv_table([
        ("auxiliary classes", f"K = {s['aux_classes']}, {s['aux_classes_used']} used as some sample's hard "
                              f"label"),
        ("usage inside blocks", f"{pct(s['aux_block_usage_frac'])} of the maximum entropy (below 50%: "
                                f"collapsing)"),
        ("usage over all classes", f"{fmt(s['aux_usage_entropy'])} of {fmt(s['aux_usage_entropy_max'])} nats"),
        ("per-sample entropy", f"{fmt(s['aux_sample_entropy'])} nats, {pct(s['aux_sample_entropy_frac'])} of "
                               f"log ψ (above 95%: nearly uniform)"),
    ]))
    page.add(figure(label_figs[0], wide=True))
    page.add(figure(label_figs[1]))
    if an.human is not None and human_fig is not None:
        h = an.human
        page.section("Generated versus human classes",
                     "The dataset has human fine labels below its primary classes, so the generated classes "
                     "can be compared with them. NMI (normalised mutual information, 0 = unrelated, "
                     "1 = the same partition) is computed inside each primary class and averaged, weighted "
                     "by class size; chance is the same with the generated labels shuffled.")
        page.add(kv_table([("within-class NMI", f"{h.nmi:.3f} (chance {h.chance:.3f}, "
                                                f"{len(h.per_class)} primary classes)")]
                          + ([("not compared", esc(", ".join(h.skipped)) + " (one human class each)")]
                             if h.skipped else [])))
        page.add(figure(human_fig, wide=True))
    if grids:
        more = (f" Shown for the first {MAX_GRID_BLOCKS} of {len(an.blocks)} primary classes."
                if len(an.blocks) > MAX_GRID_BLOCKS else "")
        page.section("What each auxiliary class looks like",
                     "For each primary class, one row per auxiliary class: the images the generator gives "
                     "that class the most soft mass, then the class's least confident members (samples "
                     "whose hard label it is, with the lowest mass). The number under each image is its "
                     "soft mass for that class. If a row's images share something a person can name, the "
                     "class means something." + more)
        page.add("".join(figure(g, wide=True) for g in grids))
    elif lab.images is None:
        page.add(box("note", "No images", ["the images of these labels could not be had, so no grids"]))


def _label_source(run: RunInfo, lab: Labels) -> list[tuple[str, str]]:
    sample = (f"{len(lab.rows)} of {lab.split_size} rows of the {esc(lab.split)} split"
              + (" (a seeded random choice)" if len(lab.rows) < lab.split_size else ""))
    if lab.source == "export":
        e = lab.export or {}
        rows = [("source", f'export <span class="mono">{esc(Path(e.get("path", "")).resolve())}</span> '
                           f'({esc(e.get("kind"))}, created {esc(e.get("created") or "?")})'),
                ("made from checkpoint", f'<span class="mono">{esc(lab.checkpoint or "?")}</span>, sha256 '
                                         f'<span class="mono">{esc(lab.checkpoint_sha256 or "?")}</span>')]
        if lab.checkpoint_sha256 and lab.checkpoint_sha256 != run.checkpoint_sha256:
            rows.append(("note", "the export was made from another checkpoint of this run than the one named "
                                 "under Runs"))
    else:
        rows = [("source", "the run's label generator (eval mode), computed now"),
                ("checkpoint", f'<span class="mono">{esc(lab.checkpoint)}</span>, sha256 '
                               f'<span class="mono">{esc(lab.checkpoint_sha256)}</span>')]
    return rows + [("samples", sample)]


def _summary(infos: list[RunInfo], lab: Labels | None, an: Analysis | None, warnings: list[str],
             notes: list[str], created: str) -> dict[str, Any]:
    """report.json: the numbers on the page, for scripts."""
    runs = []
    for r in infos:
        final, best, best_epoch = _acc(r)
        runs.append({"name": r.name, "run_dir": str(r.run_dir.resolve()), "method": r.method,
                     "epochs": len(r.history), "epochs_planned": r.epochs_planned,
                     "checkpoint": str(r.checkpoint_path.resolve()), "checkpoint_sha256": r.checkpoint_sha256,
                     "config_sha256": r.config_sha256, "final_test_acc": final, "best_test_acc": best,
                     "best_epoch": best_epoch})
    d: dict[str, Any] = {"format": "auxgen-report", "auxgen_version": auxgen.__version__, "created": created,
                         "runs": runs, "warnings": warnings, "notes": notes, "labels": None}
    if lab is not None and an is not None:
        d["labels"] = {
            "source": lab.source, "export": lab.export, "checkpoint": lab.checkpoint,
            "checkpoint_sha256": lab.checkpoint_sha256, "split": lab.split, "samples": len(lab.rows),
            "split_size": lab.split_size, "stats": an.stats,
            "blocks": [{"primary": b.primary, "name": b.name, "samples": b.n, "mass": b.mass.round(6).tolist(),
                        "hard": b.hard.tolist()} for b in an.blocks],
            "human": None if an.human is None else {
                "nmi": an.human.nmi, "chance": an.human.chance,
                "per_class": [{"primary": c["primary"], "name": c["name"], "samples": c["n"], "nmi": c["nmi"],
                               "chance": c["chance"]} for c in an.human.per_class]},
        }
    return d
