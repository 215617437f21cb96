"""manifest.json: every output file with its size and sha256, and what produced the labels."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from auxgen.checkpoint import sha256_file, write_json_atomic
from auxgen.errors import AuxgenError
from auxgen.export.format import FORMAT_NAME, FORMAT_VERSION


def file_entry(path: Path, base: Path, sha256: str | None = None) -> dict[str, Any]:
    """{"path" relative to base (posix), "bytes", "sha256"}; sha256 is computed unless given."""
    return {"path": path.relative_to(base).as_posix(), "bytes": path.stat().st_size,
            "sha256": sha256 or sha256_file(path)}


def write_manifest(path: Path, kind: str, info: dict[str, Any], files: list[dict[str, Any]],
                   counts: dict[str, int]) -> dict[str, Any]:
    """Write the manifest atomically; `info` holds the run-level fields (psi, hashes, dataset, ...)."""
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, **info,
                "files": files, "counts": counts}
    write_json_atomic(path, manifest)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load a manifest; a missing, damaged or foreign one is an AuxgenError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AuxgenError(f"{path} does not exist; is it an auxgen export?") from None
    except json.JSONDecodeError:
        raise AuxgenError(f"{path} is not valid JSON; the export is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise AuxgenError(f"{path} is not an auxgen label manifest (format is not {FORMAT_NAME!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise AuxgenError(f"{path} has format_version {data.get('format_version')}; this auxgen reads "
                          f"{FORMAT_VERSION}")
    return data


def check_files(manifest: dict[str, Any], base: Path) -> list[str]:
    """Problems with the files a manifest lists (missing, wrong size, wrong sha256); empty when all check out."""
    problems = []
    for f in manifest["files"]:
        p = base / f["path"]
        if not p.is_file():
            problems.append(f"{f['path']}: missing")
        elif os.path.getsize(p) != f["bytes"]:
            problems.append(f"{f['path']}: {os.path.getsize(p)} bytes, manifest says {f['bytes']}")
        elif sha256_file(p) != f["sha256"]:
            problems.append(f"{f['path']}: sha256 differs from the manifest")
    return problems
