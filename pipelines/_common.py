"""What the readers in pipelines/ share: opening an HDF5 export, the view rule, PNG decoding, collate.

Like every reader here it never imports auxgen; it follows docs/format.md instead. Only numpy and
h5py are imported at module level: numpy_reader (for JAX, TensorFlow, ...) needs nothing else, so
the functions that work on torch tensors or PNG bytes import torch and PIL themselves.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import h5py
import numpy as np

if TYPE_CHECKING:
    import torch

FORMAT = "auxgen-labels"

ImageT = TypeVar("ImageT", np.ndarray, "torch.Tensor")


# ------------------------------------------------------------------------------ HDF5 exports
def open_export(path: str | Path) -> h5py.File:
    """`path` opened read-only; ValueError unless its `format` attribute names an auxgen label export."""
    f = h5py.File(path, "r")
    found = f.attrs.get("format")
    if found != FORMAT:
        f.close()
        raise ValueError(f"{path} is not an auxgen label export (format attribute {found!r}, not {FORMAT!r})")
    return f


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
def apply_view(image: ImageT, view: Iterable[int], pad: int) -> ImageT:
    """docs/format.md's view rule on [..., H, W], numpy or torch; `view` is (dy, dx, flip).

    Zero-pad by `pad` on each side, take rows dy..dy+H and columns dx..dx+W, then mirror left-right if flip.
    """
    dy, dx, flip = (int(v) for v in view)
    h, w = image.shape[-2:]
    if isinstance(image, np.ndarray):
        padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)])
        out = padded[..., dy:dy + h, dx:dx + w]
        return out[..., ::-1].copy() if flip else out
    import torch.nn.functional as F

    out = F.pad(image, (pad, pad, pad, pad))[..., dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


def apply_views(images: torch.Tensor, views: torch.Tensor, pad: int) -> torch.Tensor:
    """A view per image of a batch [B, C, H, W]; views [B, 3] = (dy, dx, flip)."""
    import torch

    return torch.stack([apply_view(im, v, pad) for im, v in zip(images, views, strict=True)])


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


def collate(samples: list[tuple[torch.Tensor, int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, primary, aux_soft) samples -> batches: images [B, C, H, W], primary [B], aux_soft [B, ...]."""
    import torch

    x, y, aux = zip(*samples, strict=True)
    return torch.stack(x), torch.tensor(y), torch.stack(aux)
