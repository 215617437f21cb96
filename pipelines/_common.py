"""What the readers in pipelines/ share: opening an HDF5 export, the view rule, PNG decoding, collate.

Like every reader here it never imports auxgen; it follows docs/format.md instead. Only numpy and
h5py are imported at module level: numpy_reader (for JAX, TensorFlow, ...) needs nothing else, so
the functions that work on torch tensors or PNG bytes import torch and PIL themselves.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickletools
import re
import stat
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import h5py
import numpy as np

if TYPE_CHECKING:
    import torch

FORMAT = "auxgen-labels"

ImageT = TypeVar("ImageT", np.ndarray, "torch.Tensor")


class ExportError(ValueError):
    """An export these readers cannot use (damaged, foreign, unsafe): a one-line message naming the problem."""


def run_main(main: Callable[[], object]) -> None:
    """A reader's script entry: a bad export or file is one `error:` line and exit 2, not a traceback."""
    try:
        main()
    except (ExportError, KeyError) as e:
        text = str(e.args[0]) if e.args else type(e).__name__
        sys.exit(f"error: {' '.join(text.split())}")
    except OSError as e:  # its args[0] is an errno where strerror is set: never print that alone
        text = e.strerror or (str(e.args[0]) if e.args else type(e).__name__)
        sys.exit(f"error: {' '.join(text.split())}" + (f" ({e.filename})" if e.filename else ""))


def check_regular(path: str | Path) -> Path:
    """`path` when it is a regular file: a FIFO or device would block a reader forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise ExportError(f"{path} is not a regular file (a folder, FIFO or device); refusing to read it")
    return Path(path)


def inside(base: str | Path, rel: object) -> Path:
    """base/rel for a relative path read from a manifest that stays inside `base`; ExportError otherwise."""
    base = Path(base)
    ok = (isinstance(rel, str) and rel and "\\" not in rel and "\x00" not in rel and not Path(rel).is_absolute()
          and ".." not in rel.split("/") and base.resolve() in (base / rel).resolve().parents)
    if not ok:
        raise ExportError(f"{base}: the manifest names {str(rel)[:80]!r}, which is not a file inside the export")
    return base / rel


def read_manifest(path: str | Path) -> dict[str, Any]:
    """An export's manifest.json: a regular file holding a JSON object of format auxgen-labels."""
    try:
        data = json.loads(check_regular(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(f"{path} is not valid JSON; the export is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
        raise ExportError(f"{path} is not an auxgen label manifest (format {FORMAT!r} with a file list)")
    return data


def listed_files(manifest: dict[str, Any], base: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path inside `base`, entry) for each file the manifest lists; a path outside `base` is an ExportError."""
    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            raise ExportError(f"{base}: the manifest lists {str(entry)[:60]!r}, not a file entry")
        yield inside(base, entry.get("path")), entry


def read_listed(base: str | Path, manifest: dict[str, Any], rel: str) -> tuple[Path, bytes]:
    """The bytes of the file `rel` the manifest lists, inside `base`, read once and checked against its sha256
    (what is hashed is what the caller parses); ExportError when it is not listed, not regular or changed."""
    entry = next((e for _, e in listed_files(manifest, base) if e.get("path") == rel), None)
    if entry is None:
        raise ExportError(f"{base}: the manifest lists no {rel}")
    path = inside(base, rel)
    data = check_regular(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ExportError(f"{path} does not match the sha256 the manifest lists; the export was changed or damaged")
    return path, data


def listed_generator(base: str | Path, manifest: dict[str, Any], formats: tuple[str, ...] = ("pt2", "onnx")
                     ) -> tuple[Path, bytes] | None:
    """The first generator file the manifest lists in `formats` order, inside `base`, read once and checked
    against its sha256 (a .pt2 also against `pt2_problem`); None when the export lists none."""
    entries = [g for g in manifest.get("generators") or [] if isinstance(g, dict)]
    for fmt in formats:
        for g in entries:
            if g.get("format") != fmt:
                continue
            path = inside(base, g.get("path"))
            data = check_regular(path).read_bytes()
            sha = next((f.get("sha256") for f in manifest["files"] if isinstance(f, dict)
                        and f.get("path") == g.get("path")), None)
            if sha is None or hashlib.sha256(data).hexdigest() != sha:
                raise ExportError(f"{path} does not match the sha256 the manifest lists; not loaded")
            if fmt == "pt2":
                check_pt2(path, data)
            return path, data
    return None


# ------------------------------------------------------------------------------ .pt2 archives made elsewhere
# torch.export.load runs code from a crafted .pt2 (pickled weights and constants, sample inputs that fail the
# weights-only loader, shape expressions it evaluates, guard code it exec()s); docs/format.md lists what a
# generator file holds, and a file holding anything else is refused before torch sees it. auxgen applies the
# same rules (auxgen/export/generator_files.py); readers here cannot import it.
_PT2_MEMBER = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                         r"|models/model\.json|data/(weights|constants)/model_(weights|constants)_config\.json"
                         r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/model\.pt"
                         r"|extra/[A-Za-z0-9_.-]+")
_PT2_GLOBALS = {"torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter", "collections OrderedDict",
                *(f"torch {t}Storage" for t in ("Byte", "Char", "Short", "Int", "Long", "Half", "Float", "Double",
                                                 "BFloat16", "Bool"))}
_PT2_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.(getitem|add|sub|"
                         r"mul|truediv|floordiv|mod|neg|pow|eq|ne|lt|le|gt|ge)|torch\.sym_(int|float|max|min|not)")
_PT2_NAME = r"L\['[A-Za-z_][A-Za-z0-9_]*'\](\.size\(\)\[\d+\])?"
_PT2_GUARD = re.compile(rf"{_PT2_NAME} (==|!=|<=|>=|<|>) ({_PT2_NAME}|-?\d+)")
_PT2_SYMBOL = re.compile(r"Symbol\('[a-z]+\d+'(, (positive|integer|nonnegative|real)=(True|False))*\)")


def check_pt2(path: str | Path, data: bytes) -> None:
    """ExportError unless the .pt2 bytes hold only what a plain torch.export program needs (nothing that runs)."""
    try:
        problem = _pt2_problem(zipfile.ZipFile(io.BytesIO(data)))
    except (zipfile.BadZipFile, ValueError, KeyError, UnicodeDecodeError) as e:
        problem = f"not a readable torch.export archive ({type(e).__name__})"
    if problem:
        raise ExportError(f"refusing to load {path}: {problem}")


def _pt2_problem(z: zipfile.ZipFile) -> str | None:
    names = z.namelist()
    if len({n.split("/", 1)[0] for n in names}) != 1 or any("/" not in n for n in names):
        return "its members do not sit in one archive folder"
    members = {n.split("/", 1)[1]: n for n in names}
    odd = [m for m in members if not _PT2_MEMBER.fullmatch(m)]
    if odd or "models/model.json" not in members:
        return f"it holds {odd[0] if odd else 'no models/model.json'}, which a generator program never has"
    for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
        config = members.get(f"data/{kind}/model_{kind}_config.json")
        entries = json.loads(z.read(config)).get("config") or {} if config else {}
        for fqn, e in entries.items():
            pickled = not isinstance(e, dict) or e.get("use_pickle") is not False
            if pickled or not str(e.get("path_name")).startswith(prefix):
                return f"{kind} entry {fqn} is pickled or not a tensor, which loading would unpickle"
    if "data/sample_inputs/model.pt" in members:
        inner = zipfile.ZipFile(io.BytesIO(z.read(members["data/sample_inputs/model.pt"])))
        for n in (n for n in inner.namelist() if n.endswith(".pkl")):
            for op, arg, _ in pickletools.genops(inner.read(n)):
                if op.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEWOBJ_EX") or (
                        op.name == "GLOBAL" and arg.replace("\n", " ") not in _PT2_GLOBALS):
                    return f"its sample inputs pickle {op.name} {str(arg or '')[:60]}, which loading could run"
    return _pt2_program_problem(json.loads(z.read(members["models/model.json"])))


def _pt2_program_problem(program: dict[str, Any]) -> str | None:
    if any(not isinstance(g, str) or not _PT2_GUARD.fullmatch(g) for g in program.get("guards_code") or []):
        return "models/model.json holds guard code that loading would execute"
    stack: list[tuple[Any, Any]] = [(None, program)]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict):
            stack += list(node.items())
        elif isinstance(node, list):
            stack += [(key, v) for v in node]
        elif key == "target" and isinstance(node, str) and (not _PT2_TARGET.fullmatch(node)
                                                             or re.search("file|save|load|print", node, re.I)):
            return f"models/model.json calls {node[:60]!r}, not a plain tensor operation"
        elif key == "expr_str" and isinstance(node, str) and not _safe_expression(node):
            return f"models/model.json holds a shape expression loading would evaluate ({node[:60]!r})"
    return None


def _safe_expression(text: str) -> bool:
    rest = _PT2_SYMBOL.sub("s0", text)
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)
    return ("__" not in rest and re.fullmatch(r"[A-Za-z0-9_ +\-*/%(),.<>=!]*", rest) is not None
            and all(re.fullmatch(r"[a-z]+\d+|[A-Z][A-Za-z]+|oo", n) for n in names))


# ------------------------------------------------------------------------------ HDF5 exports
def open_export(path: str | Path) -> h5py.File:
    """`path` opened read-only; ExportError unless it is an HDF5 file whose `format` attribute names an auxgen
    label export."""
    check_regular(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ExportError(f"{path} cannot be read as HDF5 (truncated or damaged?): {str(e).splitlines()[0][:120]}"
                          ) from None
    found = f.attrs.get("format")
    if found != FORMAT:
        f.close()
        raise ExportError(f"{path} is not an auxgen label export (format attribute {found!r}, not {FORMAT!r})")
    return f


def read_split(f: h5py.File, name: str, fields: Iterable[str]) -> dict[str, Any]:
    """A split's arrays (as `read_arrays`), checked against the file's psi; ExportError when anything is off."""
    if name not in f or not isinstance(f[name], h5py.Group):
        raise ExportError(f"{f.filename} has no {name!r} split (has {', '.join(f)})")
    try:
        arrays = read_arrays(f[name], fields)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise ExportError(f"{f.filename} /{name} cannot be read (truncated or damaged?): "
                          f"{' '.join(str(e).split())[:120]}") from None
    check_labels(arrays, read_attrs(f), f"{f.filename} /{name}")
    return arrays


def check_labels(arrays: dict[str, Any], attrs: dict[str, Any], where: str) -> None:
    """docs/format.md's rules for the labels a reader trains on: shapes, finite probabilities in their block."""
    psi = attrs.get("psi")
    if not isinstance(psi, list) or not psi or not all(isinstance(p, int) and p > 0 for p in psi):
        raise ExportError(f"{where}: psi {psi!r} is not a list of positive counts")
    soft, primary = np.asarray(arrays.get("aux_soft")), np.asarray(arrays.get("primary"))
    n, k = len(arrays.get("keys", ())), sum(psi)
    if soft.ndim not in (2, 3) or soft.shape[0] != n or soft.shape[-1] != k or primary.shape != (n,):
        raise ExportError(f"{where}: aux_soft {soft.shape} / primary {primary.shape} do not fit {n} keys and "
                          f"K = sum(psi) = {k}")
    if attrs.get("num_aux", k) != k or attrs.get("num_primary", len(psi)) != len(psi):
        raise ExportError(f"{where}: num_aux/num_primary {attrs.get('num_aux')}/{attrs.get('num_primary')} "
                          f"disagree with psi {psi}")
    if soft.dtype.kind != "f" or primary.dtype.kind not in "iu":
        raise ExportError(f"{where}: aux_soft is {soft.dtype} and primary {primary.dtype}, not floats and integers")
    if n and (primary.min() < 0 or primary.max() >= len(psi)):
        raise ExportError(f"{where}: primary labels outside 0..{len(psi) - 1}")
    soft64 = soft.astype(np.float64)
    if not np.isfinite(soft64).all() or (soft64 < 0).any():
        raise ExportError(f"{where}: aux_soft holds NaN, Inf or negative values; the export is damaged")
    block = np.repeat(np.arange(len(psi)), psi)
    outside = block[None, :] != primary[:, None]
    if soft.ndim == 3:
        outside = np.broadcast_to(outside[:, None, :], soft.shape)
    if (soft64[outside] != 0).any() or (np.abs(soft64.sum(-1) - 1) > 1e-2).any():
        raise ExportError(f"{where}: aux_soft rows are not probabilities inside their primary class's block")


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """The file attributes as plain Python values (arrays such as `psi` become lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}


def read_arrays(group: h5py.Group, fields: Iterable[str]) -> dict[str, Any]:
    """The split's datasets among `fields` (those it holds) as numpy arrays, and its keys as str under "keys"."""
    out: dict[str, Any] = {k: group[k][()] for k in fields if k in group}
    # h5py returns variable-length strings as bytes
    out["keys"] = [k.decode() if isinstance(k, bytes) else str(k) for k in group["keys"][()]]
    return out


# ------------------------------------------------------------------------------ views
def apply_views(images: ImageT, views: Any, pad: int) -> ImageT:
    """docs/format.md's view rule, one view per image of a batch [N, ..., H, W] (numpy or torch; the one copy of
    the rule in pipelines/); `views` [N, 3] = (dy, dx, flip) per image.

    Zero-pad by `pad` on each side, take rows dy..dy+H and columns dx..dx+W, then mirror left-right if flip.
    """
    v = np.asarray(views.cpu() if hasattr(views, "cpu") else views, dtype=np.int64).reshape(-1, 3)
    n, (h, w) = len(v), images.shape[-2:]
    rows = v[:, 0, None] + np.arange(h)                           # [N, H] rows of the padded image
    cols = v[:, 1, None] + np.arange(w)                           # [N, W]
    cols = np.where(v[:, 2, None] == 1, cols[:, ::-1], cols)      # a flip reads the columns backwards
    flat = images.reshape(n, -1, *images.shape[-2:])              # [N, M, H, W]: any channel dims as one
    m = flat.shape[1]
    at = (np.arange(n)[:, None, None, None], np.arange(m)[None, :, None, None], rows[:, None, :, None],
          cols[:, None, None, :])
    if isinstance(images, np.ndarray):
        out = np.pad(flat, [(0, 0), (0, 0), (pad, pad), (pad, pad)])[at]
    else:
        import torch
        import torch.nn.functional as F

        out = F.pad(flat, (pad, pad, pad, pad))[tuple(torch.from_numpy(a).to(images.device) for a in at)]
    return out.reshape(images.shape)


def apply_view(image: ImageT, view: Iterable[int], pad: int) -> ImageT:
    """`apply_views` on one image [..., H, W]; `view` is (dy, dx, flip)."""
    return apply_views(image[None], [list(view)], pad)[0]


def take_view(image: ImageT, labels: Any, views: Any, v: int, pad: int) -> tuple[ImageT, Any]:
    """Stored view `v` of one sample's image with that view's own label (labels [V, K], views [V, 3]).

    With a --views export each label was computed on its view, so the two are only ever taken together.
    """
    return apply_view(image, views[v], pad), labels[v]


# ------------------------------------------------------------------------------ images and batches
def to_uint8_chw(image: Any) -> torch.Tensor:
    """A PIL image, HWC/HW numpy array or CHW tensor as a CHW tensor (uint8 kept as uint8)."""
    import torch

    if isinstance(image, torch.Tensor):
        return image if image.dim() == 3 else image[None]
    arr = np.asarray(image)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    # a copy: PIL's arrays are read-only (torch.from_numpy warns), and the base dataset's must stay unshared
    return torch.from_numpy(np.array(arr, copy=True))


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> uint8 [C, H, W], keeping the stored channels (1 for grey, 3 for RGB)."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    return to_uint8_chw(arr)


# ------------------------------------------------------------------------------ images as auxgen decoded them
MAX_IMAGE_SIDE = 1024  # auxgen's --image-size limit (auxgen/config.py MAX_IMAGE_SIZE; pipelines import no auxgen)


def export_image_shape(attrs: dict[str, Any]) -> tuple[int, int, int] | None:
    """The [C, H, W] the export's labels were computed on: its `image_shape`, or (exports made before that was
    recorded) the run config's; None when neither says."""
    shape = attrs.get("image_shape")
    if shape is None and isinstance(attrs.get("run_config"), str):
        shape = (json.loads(attrs["run_config"]).get("data") or {}).get("image_shape")
    if shape is None:
        return None
    # a crafted export must not make a reader allocate or decode to any size it names
    shape = list(shape) if hasattr(shape, "__len__") else [shape]
    if (len(shape) != 3 or not all(isinstance(v, (int, np.integer)) for v in shape)
            or shape[0] not in (1, 3) or not all(1 <= v <= MAX_IMAGE_SIDE for v in shape[1:])):
        raise ExportError(f"the export's image_shape {shape!r} is not [C, H, W] with C 1 or 3 and sides of 1 to "
                          f"{MAX_IMAGE_SIDE}: not an export auxgen wrote")
    return int(shape[0]), int(shape[1]), int(shape[2])


def export_fits(attrs: dict[str, Any]) -> bool:
    """Whether the export's images were image files auxgen fitted to `image_shape` (`fit_image`); exports made
    before `image_fit` was recorded: the datasets that always were."""
    return attrs.get("image_fit", "fit" if attrs.get("dataset") in ("imagefolder", "csv", "hf") else "none") == "fit"


def fit_image(image: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """A PIL image as auxgen decodes an image file (docs/format.md, `image_fit`): uint8 [C, H, W].

    EXIF orientation applied, 16-bit or float greyscale scaled to 8 bits (a plain convert would clip
    it), RGB (L for one channel), then the short side resized and the centre cropped to H x W
    (PIL's ImageOps.fit, bilinear), keeping the aspect ratio.
    """
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(image)
    if img.mode.startswith("I") or img.mode == "F":
        img = Image.fromarray(_eight_bit(np.asarray(img, dtype=np.float64), img.mode), "L")
    c, h, w = shape
    img = ImageOps.fit(img.convert("RGB" if c == 3 else "L"), (w, h), Image.BILINEAR)
    return np.ascontiguousarray(np.atleast_3d(np.asarray(img)).transpose(2, 0, 1))


def _eight_bit(a: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
        a = a / 257.0  # 0..65535 -> 0..255
    elif mode == "F" and a.max(initial=0) <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def present_image(image: Any, shape: tuple[int, int, int] | None, fits: bool, name: str) -> torch.Tensor:
    """An image as uint8 [C, H, W] in the shape the labels were computed on: a PIL image of an export whose
    images auxgen decoded from files (`fits`) is fitted as auxgen did; any other image must already have
    `shape` (None: not checked), else ExportError naming sample `name`."""
    import torch

    if fits and shape and hasattr(image, "getbands"):
        return torch.from_numpy(fit_image(image, shape))
    out = to_uint8_chw(image)
    if shape and tuple(out.shape) != shape:
        raise ExportError(f"sample {name} is a {'x'.join(map(str, out.shape))} image but the labels were computed "
                          f"on {'x'.join(map(str, shape))} images; give PIL images (no transform) or that shape")
    return out


def open_image(src: str | Path | bytes) -> Any:
    """An image file (or its bytes) as a loaded PIL image in its own mode (a torchvision `loader=`: its default
    converts to RGB first, clipping 16-bit greyscale); `fit_image` presents it as auxgen did."""
    from PIL import Image

    name = "image bytes" if isinstance(src, bytes) else str(check_regular(src))  # missing: named, one line
    try:
        with io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb") as f:
            img = Image.open(f)
            img.load()  # the pixels, before the file closes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # OSError: unreadable, not an image (UnidentifiedImageError), truncated; DecompressionBombError: a header
        # claiming more pixels than PIL will decode; SyntaxError/ValueError: damage some decoders report so
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:160]
        raise ExportError(f"cannot read image {name}: {reason or type(e).__name__}") from None
    return img


def folder_images(root: str | Path, attrs: dict[str, Any], keys: Iterable[str], index: Iterable[int]) -> np.ndarray:
    """The split-order image array an export's `index` refers to, decoded from the image files under `root`
    as auxgen did (uint8 [N, C, H, W], for numpy_reader, parquet_reader and onnx_refresh).

    Keys of an ImageFolder export are paths relative to its root (`cat/0001.png`, the test split's to
    --test-root when the run had one), a csv export's the paths its list gives (relative to the list's
    folder); image `keys[j]` goes to row `index[j]`. `attrs`: the export's
    attributes (its `image_shape` and `image_fit`).
    """
    shape = export_image_shape(attrs)
    if not export_fits(attrs) or shape is None or attrs.get("dataset") == "hf":  # hf keys are rows, not files
        raise ExportError(f"the export's dataset ({attrs.get('dataset')}) is not image files named by their keys; "
                          f"build the image array from the dataset itself, in split order (fit_image decodes one "
                          f"image as auxgen did)")
    root, keys, index = Path(root).expanduser(), list(keys), [int(i) for i in index]
    if not root.is_dir():
        raise ExportError(f"--image-root {root} is not a folder (the image folder the export's keys name files in)")
    out = np.zeros((max(index, default=-1) + 1, *shape), dtype=np.uint8)
    for key, row in zip(keys, index, strict=True):
        out[row] = fit_image(open_image(inside(root, key)), shape)
    return out


def collate(samples: list[tuple[torch.Tensor, int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, primary, aux_soft) samples -> batches: images [B, C, H, W], primary [B], aux_soft [B, ...]."""
    import torch

    x, y, aux = zip(*samples, strict=True)
    return torch.stack(x), torch.tensor(y), torch.stack(aux)
