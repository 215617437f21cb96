"""manifest.json: every output file with its size and sha256, and what produced the labels."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from auxgen.checkpoint import sha256_file, write_json_atomic
from auxgen.errors import AuxgenError
from auxgen.export.format import EXPORT_FILE_MODE, FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS
from auxgen.paths import regular_file_problem


def created_timestamp() -> str:
    """Now, or SOURCE_DATE_EPOCH where set (reproducible builds: two exports of one run can be byte-identical).

    A value that is not a whole number of seconds from 1970 to the year 9999 is an error, not ignored:
    whoever sets it expects reproducible files.
    """
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return datetime.now(timezone.utc).isoformat(timespec="seconds")
    hint = "unset it, or give seconds since 1970 such as 1700000000"
    if not raw.isdigit():
        raise AuxgenError(f"SOURCE_DATE_EPOCH={raw[:40]!r} is not a whole number of seconds since 1970; {hint}")
    try:
        return datetime.fromtimestamp(int(raw), timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        raise AuxgenError(f"SOURCE_DATE_EPOCH={raw[:40]} lies beyond the year 9999; {hint}") from None


def file_entry(path: Path, base: Path, sha256: str | None = None) -> dict[str, Any]:
    """{"path" relative to base (posix), "bytes", "sha256"}; sha256 is computed unless given."""
    # absolute on both sides: a temporary file's path is absolute while --out may be relative
    return {"path": path.absolute().relative_to(base.absolute()).as_posix(), "bytes": path.stat().st_size,
            "sha256": sha256 or sha256_file(path)}


def write_manifest(path: Path, kind: str, info: dict[str, Any], files: list[dict[str, Any]],
                   counts: dict[str, int]) -> dict[str, Any]:
    """Write the manifest atomically; `info` holds the run-level fields (psi, hashes, dataset, ...)."""
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, **info,
                "files": files, "counts": counts}
    write_json_atomic(path, manifest, mode=EXPORT_FILE_MODE)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load a manifest; a missing, damaged or foreign one is an AuxgenError."""
    path = Path(path)
    problem = regular_file_problem(path)
    if problem and path.exists() and not path.is_dir():
        raise AuxgenError(f"{path} {problem}")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AuxgenError(f"{path} does not exist; is it an auxgen export?") from None
    except (ValueError, OSError):  # not JSON, not text, a folder
        raise AuxgenError(f"{path} is not valid JSON; the export is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise AuxgenError(f"{path} is not an auxgen label manifest (format is not {FORMAT_NAME!r})")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise AuxgenError(f"{path} has format_version {data.get('format_version')}; this auxgen reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    return data


def check_files(manifest: dict[str, Any], base: Path) -> list[str]:
    """Problems with the files a manifest lists (not inside base, missing, wrong size, wrong sha256).

    Empty when every listed file checks out; a manifest that lists no files is a problem too.
    """
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        return ["manifest lists no files"]
    problems = []
    root = base.resolve()
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        target = (root / rel).resolve() if isinstance(rel, str) and rel else None
        if target is None or root not in target.parents:
            problems.append(f"manifest entry {entry!r} does not name a file inside {base}")
        elif not target.exists():
            problems.append(f"{rel} is listed in the manifest but missing")
        elif not target.is_file():  # a folder, FIFO or device: never read (a FIFO would block)
            problems.append(f"{rel} is not a regular file")
        elif target.stat().st_size != entry.get("bytes"):
            problems.append(f"{rel} has {target.stat().st_size} bytes, manifest says {entry.get('bytes')}")
        else:
            try:
                digest = sha256_file(target)
            except OSError as e:
                problems.append(f"{rel} cannot be read ({e.strerror})")
                continue
            if digest != entry.get("sha256"):
                problems.append(f"{rel} sha256 differs from the manifest (the file was changed or damaged)")
    return problems


def generator_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The generator files a manifest names, as `{"path", "format", ...}` entries.

    Exports since auxgen 0.2 list them under `generators`; earlier ones name only a TorchScript file
    under `generator`. Malformed entries are left out (integrity reports the manifest's problems).
    """
    found = [g for g in manifest.get("generators") or [] if isinstance(g, dict)
             and isinstance(g.get("path"), str) and isinstance(g.get("format"), str)]
    legacy = manifest.get("generator")
    if isinstance(legacy, str) and legacy and legacy not in {g["path"] for g in found}:
        found.append({"path": legacy, "format": "torchscript"})
    return found
