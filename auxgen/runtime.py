"""Where and in what precision work runs: device choice, the precision policy, and process-level
settings that make CPU work faster (none of which changes a result)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

import torch

from auxgen.errors import AuxgenError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel after every batch.

    Convolution buffers of a few MB exceed glibc's mmap threshold, so each one is mapped,
    page-faulted in and unmapped on every step: on 2 CPU cores that was over half the time of
    generator inference. Raising the thresholds lets the heap reuse them. Linux/glibc only; a
    no-op elsewhere. Returns whether the setting took.
    """
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        _tuned = False
    return _tuned


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when present), `cpu` or `cuda`; asking for CUDA without one is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise AuxgenError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """The one precision policy of train, evaluation, export and verify.

    fp32 everywhere; bf16: autocast on CUDA (on the CPU bf16 is slower than float32 on most
    CPUs, so it runs float32 there). Labels are always float32, the export format's dtype.
    fp16 would add a gradient scaler here (`scale`/`step`), used by the trainer's steps.
    """

    name: str = "fp32"
    device_type: str = "cpu"

    @classmethod
    def of(cls, name: str, device: torch.device) -> Precision:
        if name not in PRECISIONS:
            raise AuxgenError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
        return cls(name, device.type)

    @property
    def active(self) -> str:
        """The precision the work really runs in on this device."""
        return "bf16" if self.name == "bf16" and self.device_type == "cuda" else "fp32"

    def context(self) -> contextlib.AbstractContextManager:
        """Around every forward of training, evaluation and labelling."""
        if self.active == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    label_dtype = torch.float32
