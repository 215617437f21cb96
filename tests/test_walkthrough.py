"""The README's walkthrough runs end to end at tiny size and ends with verify passing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_walkthrough_tiny(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "walkthrough.py"), "--out", str(out), "--epochs", "2",
                        "--downstream-epochs", "1", "--retrain", "1", "--width", "4"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for part in ("run/config.json", "single/config.json", "labels/digits.h5", "labels/digits.h5.generator.pt2",
                 "labels/digits.h5.generator.onnx", "shards/labels/manifest.json", "shards/images/generator.pt2",
                 "report/index.html"):
        assert (out / part).is_file(), part
    hdf5 = json.loads((out / "reports" / "verify-hdf5.json").read_text())
    shards = json.loads((out / "reports" / "verify-shards.json").read_text())
    assert hdf5["passed"] and shards["passed"]
    assert [c["name"] for c in shards["checks"]] == ["evaluation", "integrity", "rederivation"]
    quality = json.loads((out / "reports" / "verify-quality.json").read_text())
    assert quality["checks"][-1]["name"] == "quality" and quality["checks"][-1]["status"] in ("pass", "warn", "fail")
    assert "test primary accuracy" in r.stdout and "refresh {" in r.stdout and str(out / "run") in r.stdout
    assert "label quality" in r.stdout and "FutureWarning" not in r.stderr
