"""The generator as a TorchScript file: (uint8 images [B, C, H, W], primary labels [B]) -> soft labels [B, K]."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auxgen.checkpoint import atomic_write
from auxgen.errors import AuxgenError
from auxgen.export.format import EXPORT_FILE_MODE

EXTRA_FILE = "auxgen.json"  # metadata stored inside the TorchScript archive


class _Exported(nn.Module):
    """A plain forward(x, y), so the file needs no auxgen class to run."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.generator(x, y)


def script_generator(generator: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of an eval-mode copy of the generator on the CPU (normalisation and mask softmax included)."""
    gen = copy.deepcopy(generator).cpu().eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still the portable choice
            return torch.jit.script(_Exported(gen))
    except Exception as e:  # a backbone TorchScript cannot compile
        raise AuxgenError(f"the generator cannot be compiled to TorchScript ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); export without --generator") from None


def save_generator_script(generator: nn.Module, path: str | Path, meta: dict[str, Any],
                          example: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Write the TorchScript generator atomically; with `example` check that it reloads and matches exactly."""
    module = script_generator(generator)
    extra = {EXTRA_FILE: json.dumps(meta, sort_keys=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(path, lambda tmp: torch.jit.save(module, tmp, _extra_files=extra), mode=EXPORT_FILE_MODE)
    if example is not None:
        x, y = example
        loaded, _ = load_generator_script(path)
        ref = copy.deepcopy(generator).cpu().eval()
        with torch.inference_mode():
            if not torch.equal(loaded(x, y), ref(x, y)):
                raise AuxgenError(f"the TorchScript generator {path} does not reproduce the generator's labels")


def load_generator_script(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript generator and its metadata (psi, checkpoint sha256, ...)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[EXTRA_FILE] or "{}")
