"""The exported generator: (uint8 images [B, C, H, W], int64 primary labels [B]) -> float32 soft labels [B, K].

Three file formats (docs/format.md, "Generator"):
- `pt2`: a `torch.export` program (`torch.export.load(path).module()(x, y)`), the default for PyTorch;
- `onnx`: an ONNX model for onnxruntime and every framework with an ONNX importer (no torch needed);
- `torchscript`: the deprecated TorchScript archive, only when asked for by name.
Every file holds the eval-mode generator (batch norm uses its running statistics), the normalisation
and the mask softmax, and a JSON metadata record `auxgen.json` (psi, hashes, image shape).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auxgen.checkpoint import atomic_write
from auxgen.errors import AuxgenError
from auxgen.export.format import EXPORT_FILE_MODE

EXTRA_FILE = "auxgen.json"  # metadata record inside every generator file (archive extra file / ONNX metadata)
GENERATOR_FORMATS = ("pt2", "onnx", "torchscript")
DEFAULT_GENERATOR_FORMATS = ("pt2", "onnx")
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAMES, OUTPUT_NAME = ("images", "primary"), "aux_soft"
# Largest |difference| allowed between a generator file's labels and the checkpoint generator's on the CPU.
# pt2 and TorchScript run torch's own kernels and are bit-exact in practice (1e-6 leaves room for float
# rounding); onnxruntime fuses batch norm into the convolutions and has its own kernels: the largest
# difference measured is 6e-8 (docs/format.md), the tolerance leaves a margin for other CPUs and builds.
GENERATOR_ATOL = {"pt2": 1e-6, "torchscript": 1e-6, "onnx": 1e-5}

Labeller = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------ names and choices
def parse_generator_formats(spec: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """'pt2,onnx' (or a sequence of names) -> the formats in GENERATOR_FORMATS order; '' or None -> ()."""
    if spec is None:
        return ()
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in GENERATOR_FORMATS]
    if unknown:
        raise AuxgenError(f"--generator-format {unknown[0]!r}: choose from {', '.join(GENERATOR_FORMATS)} "
                          f"(comma-separated, e.g. pt2,onnx)")
    return tuple(f for f in GENERATOR_FORMATS if f in names)


def generator_path(out: Path, kind: str, fmt: str) -> Path:
    """Where format `fmt` goes: `OUT/generator.pt2` in a shard folder, `X.h5.generator.pt2` beside an HDF5 file."""
    name = "generator" + SUFFIXES[fmt]
    return out / name if kind == "wds" else out.with_name(f"{out.name}.{name}")


def format_of(path: str | Path) -> str:
    """The generator format a file name stands for, by its suffix (.pt2, .onnx, .pt)."""
    suffix = Path(path).suffix
    for fmt, s in SUFFIXES.items():
        if s == suffix:
            return fmt
    raise AuxgenError(f"{path}: not a generator file (expected {', '.join(SUFFIXES.values())})")


# ------------------------------------------------------------------------------ the exported module
class _Portable(nn.Module):
    """forward(images, primary) -> soft labels, written with ops every runtime has.

    The in-process mask softmax fills masked logits with -inf; some ONNX runtimes and converters
    mishandle infinities, so the fill is the most negative finite float instead (its exp is exactly 0,
    so the block's softmax is unchanged) and a final `where` makes everything outside the block an
    exact zero whatever the runtime's exp gives.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, images: torch.Tensor, primary: torch.Tensor) -> torch.Tensor:
        logits = self.generator.logits(images).float()
        mask = self.generator.block_id[None, :] == primary[:, None]
        logp = torch.log_softmax(torch.where(mask, logits, torch.finfo(torch.float32).min), dim=1)
        return torch.where(mask, logp.exp(), 0.0)


def _eval_copy(generator: nn.Module) -> nn.Module:
    return copy.deepcopy(generator).cpu().float().eval()


def _trace_inputs(example: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # a batch of at least 2: tracing with 1 would let torch.export specialise the batch dimension to 1
    x, y = example
    x, y = x.cpu(), y.cpu().long()
    if len(x) < 2:
        x, y = x[:1].repeat(2, *([1] * (x.dim() - 1))), y[:1].repeat(2)
    return x, y


def _dynamic_batch() -> tuple[dict[int, Any], dict[int, Any]]:
    batch = torch.export.Dim("batch")
    return {0: batch}, {0: batch}


def export_program(generator: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> torch.export.ExportedProgram:
    """The eval-mode generator (plus normalisation and mask softmax) as a torch.export program, batch dynamic."""
    module = _Portable(_eval_copy(generator)).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing notes about the symbolic batch are not the user's to act on
            return torch.export.export(module, _trace_inputs(example), dynamic_shapes=_dynamic_batch())
    except Exception as e:  # a backbone torch.export cannot trace
        raise AuxgenError(f"the generator cannot be exported with torch.export ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200]}); choose another --generator-format") from None


def _onnx_model(generator: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> Any:
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs onnx and onnxscript)
    except ImportError:
        raise AuxgenError("--generator-format onnx needs the onnx, onnxscript and onnxruntime packages "
                          "(pip install onnx onnxscript onnxruntime)") from None
    module = _Portable(_eval_copy(generator)).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, _trace_inputs(example), dynamo=True, verbose=False,
                                        input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                        dynamic_shapes=_dynamic_batch(), external_data=False)
    except Exception as e:
        raise AuxgenError(f"the generator cannot be exported to ONNX ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200]}); choose another --generator-format") from None
    return program.model_proto


def onnx_opset(model: Any) -> int:
    """The default-domain opset of an ONNX ModelProto."""
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ------------------------------------------------------------------------------ write
def save_generator(generator: nn.Module, path: str | Path, fmt: str, meta: dict[str, Any],
                   example: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Write the generator as `fmt` atomically, reload it and check it on `example` against the generator.

    Returns the manifest fields of the file: `format` and `torch_version`, and `opset` for ONNX.
    A file whose labels differ by more than GENERATOR_ATOL[fmt] (or are not exact zeros outside
    the block) is an AuxgenError and is removed.
    """
    path = Path(path)
    meta_json = json.dumps(meta, sort_keys=True)
    entry: dict[str, Any] = {"format": fmt, "torch_version": torch.__version__.split("+")[0]}
    try:
        if fmt == "pt2":
            program = export_program(generator, example)
            buffer = io.BytesIO()  # torch.export.save warns about a file name not ending in .pt2 (the temporary's)
            torch.export.save(program, buffer, extra_files={EXTRA_FILE: meta_json})
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()), mode=EXPORT_FILE_MODE)
        elif fmt == "onnx":
            import onnx

            model = _onnx_model(generator, example)
            model.metadata_props.add(key=EXTRA_FILE, value=meta_json)
            entry["opset"] = onnx_opset(model)
            atomic_write(path, lambda tmp: onnx.save_model(model, tmp), mode=EXPORT_FILE_MODE)
        elif fmt == "torchscript":
            save_generator_script(generator, path, meta)
        else:
            raise AuxgenError(f"unknown generator format {fmt!r}")
    except RuntimeError as e:  # torch reports a failed archive write (a full disk) as a RuntimeError
        raise AuxgenError(f"cannot write {path}: {' '.join(str(e).split())[:200]}") from None
    problem = check_generator_file(generator, path, fmt, *example)
    if problem:
        path.unlink(missing_ok=True)
        raise AuxgenError(f"the {fmt} generator {path} does not reproduce the generator's labels: {problem}")
    return entry


def check_generator_file(generator: nn.Module, path: str | Path, fmt: str, images: torch.Tensor,
                         primary: torch.Tensor, batch_size: int = 500) -> str | None:
    """Why the file at `path` does not give the generator's labels on these images (None when it does).

    Compares with an eval-mode float32 copy of `generator` on the CPU, batch by batch with the same
    batches, within GENERATOR_ATOL[fmt]; outside each block both must be exact zeros.
    """
    diff = generator_max_diff(generator, path, fmt, images, primary, batch_size)
    if diff is None:
        return "its labels are not exact zeros outside the primary class's block"
    if not diff <= GENERATOR_ATOL[fmt]:  # also catches NaN
        return f"max abs diff {diff:.3g} over {len(images)} samples (allowed {GENERATOR_ATOL[fmt]:g})"
    return None


@torch.inference_mode()
def generator_max_diff(generator: nn.Module, path: str | Path, fmt: str, images: torch.Tensor,
                       primary: torch.Tensor, batch_size: int = 500) -> float | None:
    """Largest |file label - generator label| over the images (NaN counts as inf); None when the file puts
    anything but exact zeros outside a block."""
    run, _ = load_generator(path, fmt)
    ref = _eval_copy(generator)
    worst = 0.0
    for s in range(0, len(images), batch_size):
        x, y = images[s:s + batch_size].cpu(), primary[s:s + batch_size].cpu().long()
        theirs, ours = run(x, y).float(), ref(x, y).float()
        if theirs.shape != ours.shape:
            return float("inf")
        outside = ref.block_id[None, :] != y[:, None]
        if bool((theirs[outside] != 0).any()):
            return None
        worst = max(worst, float((theirs - ours).abs().nan_to_num(nan=float("inf")).max()) if len(x) else 0.0)
    return worst


# ------------------------------------------------------------------------------ read
def load_generator(path: str | Path, fmt: str | None = None) -> tuple[Labeller, dict[str, Any]]:
    """A generator file as a function (uint8 images, int64 primary) -> float32 soft labels on the CPU, and its
    metadata record (psi, checkpoint sha256, ...)."""
    fmt = fmt or format_of(path)
    if fmt == "pt2":
        extra = {EXTRA_FILE: ""}
        program = torch.export.load(str(path), extra_files=extra)
        module = program.module()
        return (lambda x, y: module(x, y)), json.loads(extra[EXTRA_FILE] or "{}")
    if fmt == "onnx":
        session = onnx_session(path)
        meta = session.get_modelmeta().custom_metadata_map.get(EXTRA_FILE, "{}")

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = session.run([OUTPUT_NAME], {INPUT_NAMES[0]: x.cpu().numpy(), INPUT_NAMES[1]: y.cpu().long().numpy()})
            return torch.from_numpy(np.asarray(out[0]))

        return run, json.loads(meta)
    if fmt == "torchscript":
        module, meta = load_generator_script(path)
        return (lambda x, y: module(x, y)), meta
    raise AuxgenError(f"unknown generator format {fmt!r}")


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for a generator file, with as many threads as torch uses (or `threads`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------ TorchScript (deprecated)
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
            warnings.simplefilter("ignore", FutureWarning)  # deprecated: only for --generator-format torchscript
            return torch.jit.script(_Exported(gen))
    except Exception as e:  # a backbone TorchScript cannot compile
        raise AuxgenError(f"the generator cannot be compiled to TorchScript ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); choose another --generator-format") from None


def save_generator_script(generator: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Write the TorchScript generator atomically (its metadata as the archive's extra file auxgen.json)."""
    module = script_generator(generator)
    extra = {EXTRA_FILE: json.dumps(meta, sort_keys=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(path, lambda tmp: torch.jit.save(module, tmp, _extra_files=extra), mode=EXPORT_FILE_MODE)


def load_generator_script(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript generator and its metadata (psi, checkpoint sha256, ...)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[EXTRA_FILE] or "{}")
