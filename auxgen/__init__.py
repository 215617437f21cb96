"""auxgen: learned auxiliary labels (MAXL) for your data.

The Python API (auxgen/api.py), loaded on first use so that `import auxgen` stays light:
`auxgen.train(config, out) -> Run`, `auxgen.resume(run)`, `auxgen.open_run(path)`,
`auxgen.export(run, out, format="hdf5", ...)` and `auxgen.label(run, images, primary)`.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_API = ("Run", "label", "open_run", "resume", "train")
__all__ = ["Run", "__version__", "export", "label", "open_run", "resume", "train"]


class _ExportPackage(types.ModuleType):
    """auxgen.export: the export subpackage, and callable as `auxgen.export(run, out, ...)` (auxgen.api.export)."""

    def __call__(self, *args, **kwargs):
        from auxgen.api import export

        return export(*args, **kwargs)


class _Auxgen(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the subpackage auxgen.export binds it here; it stays the package and becomes callable
        if name == "export" and type(value) is types.ModuleType:
            value.__class__ = _ExportPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Auxgen


def __getattr__(name):
    if name in _API:
        from auxgen import api

        return getattr(api, name)
    if name == "export":
        return importlib.import_module("auxgen.export")
    raise AttributeError(f"module 'auxgen' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
