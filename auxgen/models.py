"""Networks: backbones, the multi-task network f(x; theta1) and the label generator g(x, y; theta2).

Both networks take images in the *stored* format (uint8, [B, C, H, W], values 0..255) and do
their own normalisation, so an exported generator needs nothing but the stored images.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auxgen.data import shape_map
from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy
from auxgen.losses import upcast

NORM_MEAN, NORM_STD = 0.5, 0.2  # the authors' normalisation, for every dataset


Norm = tuple[float | tuple[float, ...], float | tuple[float, ...]]  # (mean, std): one value, or one per channel


class Normalize(nn.Module):
    """uint8 (or float in 0..255) images -> float, (x/255 - mean) / std.

    A mean and std per channel (pretrained weights' RGB statistics) broadcast a one-channel image to
    three identical channels, which is how greyscale data meets an RGB backbone.
    """

    def __init__(self, mean: float | tuple[float, ...] = NORM_MEAN, std: float | tuple[float, ...] = NORM_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # integer images become float32; float input keeps its dtype (float64 in gradient checks)
        x = x if x.is_floating_point() else x.float()
        if isinstance(self.mean, tuple):
            mean, std = (x.new_tensor(v).view(-1, 1, 1) for v in (self.mean, self.std))
            return (x / 255.0 - mean) / std
        return (x / 255.0 - self.mean) / self.std


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def cnn(in_channels: int, width: int = 32) -> tuple[nn.Module, int]:
    """A small fast CNN for CPU work and tests: 3 conv-BN-ReLU stages, global average pool."""
    w = width
    layers = [*_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2, ceil_mode=True),
              *_conv_bn(w, 2 * w), nn.MaxPool2d(2, ceil_mode=True),
              *_conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), 4 * w


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(in_channels: int, width: int = 64) -> tuple[nn.Module, int]:
    """VGG-16 with batch norm, as in the paper; width scales the channel counts (64 = paper).

    Pools use ceil_mode so that small inputs (8x8 digits) keep a 1x1 map instead of vanishing.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            cout = int(v) * width // 64
            layers += _conv_bn(c, cout)
            c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def resnet18(in_channels: int, width: int = 64) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet-18: 3x3 stem, no stem pooling, four stages of two basic blocks."""
    layers: list[nn.Module] = _conv_bn(in_channels, width)
    c = width
    for i, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2**i
        layers += [BasicBlock(c, cout, stride), BasicBlock(cout, cout, 1)]
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone of the registry: its builder and the facts the rest of auxgen asks about it."""

    # (in_channels, width, weights) -> (module, feature size); weights only for pretrained entries
    build: Callable[..., tuple[nn.Module, int]]
    default_width: int  # --width when not given
    about: str  # for --backbone's help
    # every layer has a forward-mode AD rule, so the exact meta-gradient (a jvp, maxl.py) works
    forward_ad: bool = True
    pretrained: bool = False  # takes --weights; its width is fixed (--width does not apply)
    input_size: int | None = None  # the square image size its weights want (--image-size follows it)
    # (weights) -> the normalisation its weights want, without loading them; None: auxgen's own
    norm: Callable[[str | None], Norm] | None = None


# Families of torchvision / timm models and whether forward-mode AD runs through them (measured with a
# MAXL meta step, --meta-order 2, tests/test_pretrained.py::test_forward_ad_of_families); a family not
# listed is taken as without, so it trains with the first-order meta-gradient.
TORCHVISION_FORWARD_AD = {"resnet": True, "resnext": True, "wide_resnet": True, "mobilenet_v2": True,
                          "mobilenet_v3": True, "efficientnet": True, "convnext": True, "regnet": True,
                          "swin": True, "densenet": True, "shufflenet": True, "mnasnet": True, "vgg": True,
                          "vit": False}  # scaled-dot-product attention has no forward-mode AD rule
TIMM_FORWARD_AD = {"resnet": True, "convnext": True, "efficientnet": True, "mobilenetv3": True, "regnet": True,
                   "vit": False, "deit": False}


def _family_ad(name: str, table: dict[str, bool]) -> bool:
    fam = max((f for f in table if name.startswith(f)), key=len, default=None)
    return table[fam] if fam is not None else False


def is_weights_file(weights: str) -> bool:
    """--weights names a local file (a path) rather than a weights name of the library."""
    return "/" in weights or "." in weights or Path(weights).expanduser().exists()


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict saved with torch.save, read with weights_only=True: nothing in it can run code."""
    from auxgen.paths import check_regular_file

    check_regular_file(Path(path).expanduser(), "--weights")
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle naming something weights_only refuses
        raise AuxgenError(f"--weights {path} is not a torch state_dict file ({_load_problem(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AuxgenError(f"--weights {path} holds no state_dict (a dict of tensors)")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # else training diverges at once and the message blames the learning rate
        raise AuxgenError(f"--weights {path}: tensor {bad} holds NaN or infinite values; the weights are damaged "
                          f"(or were saved from a diverged training)")
    return state


# torch's refusal of a pickled global; what follows it is advice to load the file unsafely
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _load_problem(e: Exception) -> str:
    """Why torch.load refused a --weights file, in one line without terminal escapes."""
    from auxgen.paths import one_line

    text = str(e)
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return (f"it names the Python global {refused.group(1)}, refused because loading it could run code; a "
                f"whole model saved with torch.save(model) does this: save `model.state_dict()` (plain tensors) "
                f"with torch.save instead")
    return one_line(RuntimeError(_ANSI.sub("", text)))


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str, name: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        missing = [k for k in model.state_dict() if k not in state]
        unexpected = [k for k in state if k not in model.state_dict()]
        what = (f"it lacks {missing[0]} (and {len(missing) - 1} more)" if missing else
                f"it has {unexpected[0]}, which {name} has not" if unexpected else
                " ".join(str(e).split("size mismatch for ", 1)[-1].split())[:160])
        raise AuxgenError(f"--weights {path} does not fit backbone {name}: {what}") from None


def _torchvision_weights(model: str, weights: str | None) -> Any:
    """The torchvision weights enum member a --weights value names (DEFAULT for a local file or none)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model)
    except (KeyError, ValueError):
        raise AuxgenError(f"torchvision model {model} has no pretrained weights") from None
    key = "DEFAULT" if weights is None or is_weights_file(weights) else weights
    if key not in enum.__members__:
        raise AuxgenError(f"--weights {key!r} is not a weights name of torchvision's {model}; choose one of "
                          f"{', '.join(enum.__members__)}, or give a state_dict file")
    return enum[key]


def _torchvision_norm(model: str) -> Callable[[str | None], Norm]:
    def norm(weights: str | None) -> Norm:
        t = _torchvision_weights(model, weights).transforms()
        return tuple(t.mean), tuple(t.std)
    return norm


def _strip_last_linear(net: nn.Module, name: str) -> int:
    """Replace a classifier's last Linear layer (its 1000 ImageNet logits) by the identity; its input size."""
    last = None
    for qual, mod in net.named_modules():
        if isinstance(mod, nn.Linear):
            last = qual
    if last is None:
        raise AuxgenError(f"backbone {name} has no Linear classifier layer to replace by auxgen's heads")
    parent = net.get_submodule(last.rpartition(".")[0]) if "." in last else net
    features = net.get_submodule(last).in_features
    setattr(parent, last.rpartition(".")[2], nn.Identity())
    return features


def _torchvision_backbone(model: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_channels: int, width: int, weights: str | None = None) -> tuple[nn.Module, int]:
        from torchvision.models import get_model

        _check_channels(in_channels, f"torchvision:{model}")
        net = get_model(model, weights=None)
        if weights is not None and is_weights_file(weights):
            _load_into(net, _read_state_dict(weights), weights, f"torchvision:{model}")
        elif weights is not None:
            member = _torchvision_weights(model, weights)
            # the torch hub cache first, else a download into it; read with weights_only like a --weights file
            state = _download(lambda: member.get_state_dict(progress=False, check_hash=True, weights_only=True),
                              f"torchvision's {member}")
            _load_into(net, state, weights, f"torchvision:{model}")
        return net, _strip_last_linear(net, f"torchvision:{model}")
    return build


def _download(fetch: Callable[[], Any], what: str) -> Any:
    try:
        return fetch()
    except AuxgenError:
        raise
    except Exception as e:  # no network, a proxy, a damaged cache file
        from auxgen.paths import one_line

        raise AuxgenError(f"cannot get the weights {what} ({type(e).__name__}: {one_line(e, 120)}); offline, put "
                          f"them in the torch hub cache ($TORCH_HOME/hub) or pass --weights FILE") from None


def _check_channels(in_channels: int, name: str) -> None:
    if in_channels not in (1, 3):
        raise AuxgenError(f"backbone {name} takes RGB (or greyscale) images, not {in_channels} channels")


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise AuxgenError("timm backbones need the timm package: pip install 'auxgen[timm]'") from None
    return timm


def _timm_norm(model: str) -> Callable[[str | None], Norm]:
    def norm(weights: str | None) -> Norm:
        cfg = _timm().models.get_pretrained_cfg(model)
        if cfg is None:  # a model without pretrained weights: ImageNet's statistics
            return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return tuple(cfg.mean), tuple(cfg.std)
    return norm


def _timm_backbone(model: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_channels: int, width: int, weights: str | None = None) -> tuple[nn.Module, int]:
        timm = _timm()
        _check_channels(in_channels, f"timm:{model}")
        if weights is not None and not is_weights_file(weights) and weights != "DEFAULT":
            raise AuxgenError(f"--weights for timm:{model} takes DEFAULT (timm's pretrained weights) or a "
                              f"state_dict file, not {weights!r}")
        net = (_download(lambda: timm.create_model(model, pretrained=True), f"of timm's {model}")
               if weights == "DEFAULT" else timm.create_model(model, pretrained=False))
        if weights is not None and is_weights_file(weights):
            _load_into(net, _read_state_dict(weights), weights, f"timm:{model}")
        net.reset_classifier(0)
        return net, int(getattr(net, "head_hidden_size", None) or net.num_features)
    return build


class _Registry(dict):
    """BACKBONES: the fixed entries, and `torchvision:NAME` / `timm:NAME` entries made on first use."""

    def __missing__(self, name: str) -> BackboneEntry:
        return _pretrained_entry(name)

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        try:
            return isinstance(name, str) and ":" in name and bool(_pretrained_entry(name))
        except AuxgenError:
            return False

    def get(self, name: Any, default: Any = None) -> Any:
        return self[name] if name in self else default


@functools.lru_cache(maxsize=64)
def _pretrained_entry(name: str) -> BackboneEntry:
    lib, _, model = name.partition(":")
    if lib == "torchvision":
        from torchvision.models import list_models

        if model not in list_models(module=__import__("torchvision").models):
            raise AuxgenError(f"unknown backbone {name!r}: torchvision has no classification model {model!r}")
        crop = _torchvision_weights(model, None).transforms().crop_size
        return BackboneEntry(_torchvision_backbone(model), default_width=0, about="torchvision, pretrained",
                             forward_ad=_family_ad(model, TORCHVISION_FORWARD_AD), pretrained=True,
                             input_size=int(crop[0]), norm=_torchvision_norm(model))
    if lib == "timm":
        timm = _timm()
        if not timm.is_model(model):
            raise AuxgenError(f"unknown backbone {name!r}: timm has no model {model!r}")
        cfg = timm.models.get_pretrained_cfg(model)
        size = int(cfg.input_size[-1]) if cfg is not None else None
        return BackboneEntry(_timm_backbone(model), default_width=0, about="timm, pretrained",
                             forward_ad=_family_ad(model, TIMM_FORWARD_AD), pretrained=True, input_size=size,
                             norm=_timm_norm(model))
    raise AuxgenError(f"unknown backbone {name!r}; choose one of {', '.join(dict.keys(BACKBONES))}, "
                      f"torchvision:NAME or timm:NAME")


# The one list of backbones: `--backbone` choices and help come from it; a new backbone is one entry.
# torchvision:NAME and timm:NAME (pretrained ImageNet models) are entries too, made when first named.
BACKBONES: dict[str, BackboneEntry] = _Registry({
    "vgg16": BackboneEntry(vgg16, default_width=64, about="paper"),
    "resnet18": BackboneEntry(resnet18, default_width=64, about="CIFAR-style"),
    "cnn": BackboneEntry(cnn, default_width=32, about="small, fast"),
})


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of a backbone; an unknown name is an AuxgenError."""
    if name not in dict.keys(BACKBONES) and ":" not in name:
        raise AuxgenError(f"unknown backbone {name!r}; choose one of {', '.join(dict.keys(BACKBONES))}, "
                          f"torchvision:NAME or timm:NAME")
    return BACKBONES[name]


def make_backbone(name: str, in_channels: int, width: int | None = None,
                  weights: str | None = None) -> tuple[nn.Module, int]:
    """A backbone by name and the size of the feature vector it produces; `weights` for pretrained ones."""
    entry = backbone_entry(name)
    if entry.pretrained:
        return entry.build(in_channels, 0, weights)
    if weights is not None:
        raise AuxgenError(f"--weights is for pretrained backbones (torchvision:NAME, timm:NAME), not {name}")
    return entry.build(in_channels, width or entry.default_width)


def backbone_norm(name: str, weights: str | None) -> Norm:
    """The normalisation of a backbone's inputs: its weights' mean and std, or auxgen's own."""
    entry = backbone_entry(name)
    return entry.norm(weights) if entry.norm is not None else (NORM_MEAN, NORM_STD)


def _head(features: int, classes: int) -> nn.Module:
    # the authors' heads: one hidden layer of the feature width
    return nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, classes))


class MultiTaskNet(nn.Module):
    """f(x; theta1): shared backbone, a primary head over P classes and an auxiliary head over K.

    `weights` (pretrained backbones): a weights name of the library or a state_dict file to start from;
    `norm` overrides the normalisation the backbone's weights want (a network rebuilt to load a
    checkpoint into passes weights=None and the normalisation of the run's weights).
    """

    def __init__(self, backbone: str, in_channels: int, num_primary: int, num_aux: int,
                 width: int | None = None, weights: str | None = None, norm: Norm | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(*(norm or backbone_norm(backbone, weights)))
        self.backbone, feat = make_backbone(backbone, in_channels, width, weights)
        self.primary = _head(feat, num_primary)
        self.aux = _head(feat, num_aux)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(self.normalize(x))
        return self.primary(h), self.aux(h)


def mask_softmax(logits: torch.Tensor, y: torch.Tensor, block_id: torch.Tensor) -> torch.Tensor:
    """Softmax over the block of each sample's primary class; exact zeros elsewhere.

    Masked-out logits are set to -inf before a log-softmax, so nothing overflows however large
    the logits are (the paper's exp(M*z) form would).
    """
    mask = block_id[None, :] == y[:, None]
    return torch.log_softmax(upcast(logits).masked_fill(~mask, float("-inf")), dim=1).exp()


class ShapeInput(nn.Module):
    """The generator's --gen-input shape, in place of Normalize: each image's shape map (auxgen.data.shape_map:
    its colours projected on its own main colour axis, the ink positive), scaled to unit root-mean-square and
    given to every input channel. A label computed from it cannot depend on the image's colours, brightness or
    contrast, only on where its ink is."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 under bf16 autocast too: the colour covariance sums squares of 0..255 over the image, and
        # export computes labels in float32, so training sees the same map (an exported file, traced without
        # autocast, holds no autocast region: its loader admits plain tensor operations only)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._map(x)
        return self._map(x)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        m = shape_map(x if x.is_floating_point() else x.float())
        m = m / m.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)  # a flat image stays 0
        return m.expand(-1, self.channels, -1, -1)


class LabelGenerator(nn.Module):
    """g(x, y; theta2): a backbone and one head of K logits, turned into soft labels by the mask softmax.

    shape_input: the backbone sees each image's colour-free shape map (ShapeInput), not the image."""

    def __init__(self, backbone: str, in_channels: int, hierarchy: Hierarchy, width: int | None = None,
                 weights: str | None = None, norm: Norm | None = None, shape_input: bool = False) -> None:
        super().__init__()
        self.normalize = (ShapeInput(in_channels) if shape_input
                          else Normalize(*(norm or backbone_norm(backbone, weights))))
        self.backbone, feat = make_backbone(backbone, in_channels, width, weights)
        self.head = _head(feat, hierarchy.num_aux)
        self.register_buffer("block_id", hierarchy.block_id(), persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mask_softmax(self.logits(x), y, self.block_id)
