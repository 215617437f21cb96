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
import hashlib
import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auxgen.checkpoint import atomic_write
from auxgen.errors import AuxgenError
from auxgen.export.format import EXPORT_FILE_MODE, FOLDER_KINDS
from auxgen.paths import one_line, regular_file_problem

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
    """Where format `fmt` goes: `OUT/generator.pt2` in a shard folder, `OUT/_generator.pt2` in a parquet folder,
    `X.h5.generator.pt2` beside an HDF5 file."""
    name = "generator" + SUFFIXES[fmt]
    if kind == "parquet":  # `_generator.pt2`: a name dataset readers skip, so the folder reads as one table
        return out / f"_{name}"
    return out / name if kind in FOLDER_KINDS else out.with_name(f"{out.name}.{name}")


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
                          f"{one_line(e)}); choose another --generator-format") from None


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
                          f"{one_line(e)}); choose another --generator-format") from None
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
        raise AuxgenError(f"cannot write {path}: {one_line(e, whole=True)}") from None
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
                       primary: torch.Tensor, batch_size: int = 500, sha256: str | None = None) -> float | None:
    """Largest |file label - generator label| over the images (NaN counts as inf); None when the file puts
    anything but exact zeros outside a block. With `sha256` the file must match it to be loaded at all."""
    run, _ = load_generator(path, fmt, sha256)
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


# ------------------------------------------------------------------------------ safe loading
# What auxgen loads from a generator file made by someone else (docs/format.md, "Loading a generator file
# safely"). torch.export.load runs code from a crafted .pt2: it unpickles (weights_only=False) any weight
# or constant whose config says use_pickle, custom and opaque objects, legacy weight files and sample
# inputs that fail the weights-only loader; it sympifies (evaluates) shape expressions and exec()s the
# guard code of models/model.json. So a .pt2 is inspected first and refused unless every member is one
# torch.export.save writes for a plain program, nothing is pickled but tensors, and every expression,
# guard and call target is of the few plain forms such a program has. ONNX files are data for
# onnxruntime (refused with external data: it would read other files). TorchScript archives are code:
# they are loaded only when the manifest lists them with a matching sha256, like every generator file.
_PT2_MEMBER = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                         r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
                         r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
                         r"|data/sample_inputs/model\.pt|extra/[A-Za-z0-9_.-]+")
_PAYLOAD = {"data/weights/model_weights_config.json": re.compile(r"weight_\d+"),
            "data/constants/model_constants_config.json": re.compile(r"tensor_\d+")}
_PICKLE_GLOBALS = {"torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter", "collections OrderedDict",
                   *(f"torch {t}Storage" for t in ("Byte", "Char", "Short", "Int", "Long", "Half", "Float",
                                                    "Double", "BFloat16", "Bool"))}
_PICKLE_REFUSED = {"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEWOBJ_EX"}
_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.(getitem|add|sub|mul|"
                     r"truediv|floordiv|mod|neg|pow|eq|ne|lt|le|gt|ge)|torch\.sym_(int|float|max|min|not)")
_UNSAFE_OP = re.compile(r"file|save|load|print", re.IGNORECASE)  # aten ops that touch files (from_file, ...)
_NAME = r"L\['[A-Za-z_][A-Za-z0-9_]*'\](\.size\(\)\[\d+\])?"
_GUARD = re.compile(rf"{_NAME} (==|!=|<=|>=|<|>) ({_NAME}|-?\d+)")
_SYMBOL_CALL = re.compile(r"Symbol\('[a-z]+\d+'(, (positive|integer|nonnegative|real)=(True|False))*\)")
_SYMPY_NAMES = {"Integer", "Rational", "Mul", "Add", "Pow", "Mod", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
                "FloorDiv", "CeilToInt", "FloorToInt", "CleanDiv", "PythonMod", "IntTrueDiv", "TruncToInt",
                "ToFloat", "True", "False", "oo", "And", "Or", "Not"}


def pt2_problem(data: bytes) -> str | None:
    """Why loading these .pt2 bytes could run code or read other files (None: safe to torch.export.load)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1 or any("/" not in n for n in names):
                return "its members do not sit in one archive folder (not a torch.export.save archive)"
            members = {n.split("/", 1)[1]: n for n in names}
            odd = sorted(m for m in members if not _PT2_MEMBER.fullmatch(m))
            if odd:
                return f"it holds a member torch.export.save never writes for a program ({odd[0]})"
            if "models/model.json" not in members:
                return "it holds no models/model.json (not a torch.export program)"
            for config, pattern in _PAYLOAD.items():
                if config in members:
                    problem = _payload_problem(z.read(members[config]), pattern)
                    if problem:
                        return f"{config}: {problem}"
            if "data/sample_inputs/model.pt" in members:
                problem = _pickle_archive_problem(z.read(members["data/sample_inputs/model.pt"]))
                if problem:
                    return f"data/sample_inputs/model.pt: {problem}"
            return _program_problem(z.read(members["models/model.json"]))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, RuntimeError) as e:
        return f"it is not a readable zip archive ({type(e).__name__})"


def _payload_problem(raw: bytes, pattern: re.Pattern[str]) -> str | None:
    config = json.loads(raw.decode("utf-8")).get("config")
    if not isinstance(config, dict):
        return "no config mapping"
    for name, entry in config.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            return f"{name} is stored pickled (use_pickle), which loading would unpickle and could run code"
        if not isinstance(entry.get("path_name"), str) or not pattern.fullmatch(entry["path_name"]):
            return f"{name} names a payload of another kind ({str(entry.get('path_name'))[:40]})"
    return None


def _pickle_archive_problem(raw: bytes) -> str | None:
    """A torch.save zip whose pickles name nothing but tensors, storages and OrderedDict."""
    import pickletools

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            pickles = [n for n in z.namelist() if n.endswith(".pkl")]
            for name in pickles:
                for op, arg, _ in pickletools.genops(z.read(name)):
                    if op.name in _PICKLE_REFUSED or (op.name == "GLOBAL" and arg.replace("\n", " ")
                                                      not in _PICKLE_GLOBALS):
                        return f"it pickles {op.name} {str(arg or '')[:60]}, which loading could run"
    except (zipfile.BadZipFile, ValueError, OSError):
        return "not a torch.save archive (a plain pickle, which loading would run)"
    return None if pickles else "no pickled data"


def _program_problem(raw: bytes) -> str | None:
    """Call targets, shape expressions and guard code of models/model.json, each of its plain forms only."""
    program = json.loads(raw.decode("utf-8"))
    if not isinstance(program, dict):
        return "models/model.json is not a program"
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not _GUARD.fullmatch(guard):
            return f"models/model.json holds guard code that loading would execute ({str(guard)[:60]!r})"
    for key, value in _strings(program):
        if key == "target" and (not _TARGET.fullmatch(value) or _UNSAFE_OP.search(value)):
            return f"models/model.json calls {value[:60]!r}, not a plain tensor operation"
        if key == "expr_str" and not _safe_expression(value):
            return f"models/model.json holds a shape expression loading would evaluate ({value[:60]!r})"
    return None


def _strings(node: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    """(key, value) of every string in a JSON tree, with the key it sits under."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def _safe_expression(text: str) -> bool:
    """sympy arithmetic on shape symbols (s0, 2*s1 + 1, Symbol('s3', positive=True)), nothing else."""
    rest = _SYMBOL_CALL.sub("s0", text)
    if "__" in rest or not re.fullmatch(r"[A-Za-z0-9_ +\-*/%(),.<>=!]*", rest):
        return False
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)
    return all(re.fullmatch(r"[a-z]+\d+", n) or n in _SYMPY_NAMES for n in names)


def onnx_problem(data: bytes) -> str | None:
    """Why an ONNX model could read other files (tensors kept as external data), or None."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf's own decode errors
        return f"it is not a readable ONNX model ({type(e).__name__})"
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            return f"tensor {t.name} is external data (another file), which auxgen never writes"
    return None


def read_generator_bytes(path: str | Path, sha256: str | None = None) -> bytes:
    """A generator file's bytes, read once (what is checked is what is loaded), matching `sha256` when given."""
    path = Path(path)
    problem = regular_file_problem(path)
    if problem:
        raise AuxgenError(f"generator file {path} {problem}")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise AuxgenError(f"generator file {path} does not match the manifest's sha256; not loaded")
    return data


# ------------------------------------------------------------------------------ read
def load_generator(path: str | Path, fmt: str | None = None,
                   sha256: str | None = None) -> tuple[Labeller, dict[str, Any]]:
    """A generator file as a function (uint8 images, int64 primary) -> float32 soft labels on the CPU, and its
    metadata record (psi, checkpoint sha256, ...).

    The bytes are read once, checked against `sha256` when given and, for .pt2 and ONNX, inspected
    for anything that could run code or read other files before they are loaded (see above).
    """
    fmt = fmt or format_of(path)
    data = read_generator_bytes(path, sha256)
    problem = pt2_problem(data) if fmt == "pt2" else onnx_problem(data) if fmt == "onnx" else None
    if problem:
        raise AuxgenError(f"refusing to load generator file {path}: {problem}")
    if fmt == "pt2":
        extra = {EXTRA_FILE: ""}
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
        module = program.module()
        return (lambda x, y: module(x, y)), json.loads(extra[EXTRA_FILE] or "{}")
    if fmt == "onnx":
        session = onnx_session(data)
        meta = session.get_modelmeta().custom_metadata_map.get(EXTRA_FILE, "{}")

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = session.run([OUTPUT_NAME], {INPUT_NAMES[0]: x.cpu().numpy(), INPUT_NAMES[1]: y.cpu().long().numpy()})
            return torch.from_numpy(np.asarray(out[0]))

        return run, json.loads(meta)
    if fmt == "torchscript":
        module, meta = load_generator_script(io.BytesIO(data))
        return (lambda x, y: module(x, y)), meta
    raise AuxgenError(f"unknown generator format {fmt!r}")


def onnx_session(path: str | Path | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for a generator file (or its bytes), with as many threads as torch uses."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


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
                          f"{one_line(e)}); choose another --generator-format") from None


def save_generator_script(generator: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Write the TorchScript generator atomically (its metadata as the archive's extra file auxgen.json)."""
    module = script_generator(generator)
    extra = {EXTRA_FILE: json.dumps(meta, sort_keys=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(path, lambda tmp: torch.jit.save(module, tmp, _extra_files=extra), mode=EXPORT_FILE_MODE)


def load_generator_script(path: str | Path | io.BytesIO) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript generator (a file or its bytes) and its metadata (psi, checkpoint sha256, ...)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(path if isinstance(path, io.BytesIO) else str(path), map_location="cpu",
                                _extra_files=extra)
    return module, json.loads(extra[EXTRA_FILE] or "{}")
