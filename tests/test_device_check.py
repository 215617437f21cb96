"""benchmarks/device_check.py end to end on the CPU (--quick): every part runs, the table and the files come out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_cpu_run_end_to_end(tmp_path, capsys):
    dc = _module()
    # the cuda tests run on their own in the suite (and skip here); running them again in a subprocess would double
    # the time, so the quick run skips them; `python benchmarks/device_check.py --device cpu --quick` runs them
    rc = dc.main(["--device", "cpu", "--quick", "--skip-tests", "--out", str(tmp_path / "out"),
                  "--data", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert not res["errors"] and not res["skipped"]
    t = res["timings"]
    for v in dc.VARIANTS:
        assert t[f"{v}/fp32"]["finite"] and t[f"{v}/fp32"]["s_per_epoch"] > 0, v
    assert t["exact/bf16"]["precision"] == "fp32"  # bf16 runs as float32 on the CPU
    assert {"single/fp32/compile-default", "exact/fp32/compile-default"} <= set(t)
    assert t["export/fp32"]["raw_per_s"] > 0 and t["export/fp32"]["hdf5_per_s"] > 0
    table = printed[printed.index("device_check on cpu"):]  # the table comes last
    assert "exact" in table and "export (80 images)" in table and table.rstrip().endswith("figures device_check.json")
    assert (tmp_path / "out" / "device_check.log").read_text().count("s/epoch") >= len(dc.VARIANTS)
    assert not any(p.name.startswith("auxgen-device-check-") for p in tmp_path.iterdir())  # the data is removed
