"""Issue 25, export side and the Python API: each finding of the third probe on them, as a test.

A failed or interrupted HDF5 export leaves nothing of itself; --force replaces only an earlier auxgen
export; an export never writes over any input the run's config names; k-means targets are checked
at export; the Python API answers bad arguments and damaged runs in one line.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from auxgen.errors import AuxgenError
from auxgen.export import export_labels


def run_cli(*args: str) -> tuple[int, list[str]]:
    """auxgen's console entry point in this process: (exit code, stderr lines)."""
    from auxgen import cli

    old, real = sys.argv, sys.stderr
    sys.argv, sys.stderr = ["auxgen", *map(str, args)], io.StringIO()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        err = sys.stderr.getvalue().strip().splitlines()
        sys.argv, sys.stderr = old, real
    return code, err


def one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and type(e.value) is AuxgenError or isinstance(e.value, AuxgenError), msg
    for n in needles:
        assert n in msg, msg


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the tiny run."""
    dest = tmp_path_factory.mktemp("f25") / "run"
    shutil.copytree(tiny_run, dest)
    return dest


# ------------------------------------------------------------------------------ k-means targets (item 5)
@pytest.fixture(scope="module")
def kmeans_run(tmp_path_factory) -> Path:
    from auxgen.trainer import train

    out = tmp_path_factory.mktemp("f25km") / "km"
    train(tiny_config(method="kmeans", epochs=1), out, show=False)
    return out


def _kmeans_copy(kmeans_run: Path, dest: Path) -> tuple[Path, np.ndarray]:
    shutil.copytree(kmeans_run, dest)
    return dest, np.load(dest / "targets.npy")


def test_kmeans_targets_outside_their_block_are_refused_at_export(kmeans_run, tmp_path):
    from auxgen.run import load_run

    run, good = _kmeans_copy(kmeans_run, tmp_path / "run")
    psi = load_run(run).hier.psi
    moved = (good + psi[0]) % sum(psi)  # in range [0, K), but in the next class's block
    np.save(run / "targets.npy", moved)
    with pytest.raises(AuxgenError) as e:
        export_labels(run, tmp_path / "x.h5", split="train")
    one_line(e, "outside their primary class's block")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("content", ["npz", "text", "empty"])
def test_kmeans_targets_that_are_not_an_npy_array_are_one_line(kmeans_run, tmp_path, content):
    run, good = _kmeans_copy(kmeans_run, tmp_path / "run")
    target = run / "targets.npy"
    if content == "npz":
        with open(target, "wb") as f:
            np.savez(f, targets=good)
    elif content == "text":
        target.write_text("0,1,2\n")
    else:
        target.write_bytes(b"")
    with pytest.raises(AuxgenError) as e:
        export_labels(run, tmp_path / "x.h5", split="train")
    one_line(e, "targets.npy")
    assert not (tmp_path / "x.h5").exists()
