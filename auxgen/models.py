"""Networks: backbones, the multi-task network f(x; theta1) and the label generator g(x, y; theta2).

Both networks take images in the *stored* format (uint8, [B, C, H, W], values 0..255) and do
their own normalisation, so an exported generator needs nothing but the stored images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auxgen.errors import AuxgenError
from auxgen.hierarchy import Hierarchy
from auxgen.losses import upcast

NORM_MEAN, NORM_STD = 0.5, 0.2  # the authors' normalisation, for every dataset


class Normalize(nn.Module):
    """uint8 (or float in 0..255) images -> float, (x/255 - mean) / std."""

    def __init__(self, mean: float = NORM_MEAN, std: float = NORM_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # integer images become float32; float input keeps its dtype (float64 in gradient checks)
        x = x if x.is_floating_point() else x.float()
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

    build: Callable[[int, int], tuple[nn.Module, int]]  # (in_channels, width) -> (module, feature size)
    default_width: int  # --width when not given
    about: str  # for --backbone's help
    # every layer has a forward-mode AD rule, so the exact meta-gradient (a jvp, maxl.py) works
    forward_ad: bool = True


# The one list of backbones: `--backbone` choices and help come from it; a new backbone is one entry.
BACKBONES: dict[str, BackboneEntry] = {
    "vgg16": BackboneEntry(vgg16, default_width=64, about="paper"),
    "resnet18": BackboneEntry(resnet18, default_width=64, about="CIFAR-style"),
    "cnn": BackboneEntry(cnn, default_width=32, about="small, fast"),
}


def make_backbone(name: str, in_channels: int, width: int | None = None) -> tuple[nn.Module, int]:
    """A backbone by name and the size of the feature vector it produces."""
    if name not in BACKBONES:
        raise AuxgenError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    entry = BACKBONES[name]
    return entry.build(in_channels, width or entry.default_width)


def _head(features: int, classes: int) -> nn.Module:
    # the authors' heads: one hidden layer of the feature width
    return nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, classes))


class MultiTaskNet(nn.Module):
    """f(x; theta1): shared backbone, a primary head over P classes and an auxiliary head over K."""

    def __init__(self, backbone: str, in_channels: int, num_primary: int, num_aux: int,
                 width: int | None = None) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone, feat = make_backbone(backbone, in_channels, width)
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


class LabelGenerator(nn.Module):
    """g(x, y; theta2): a backbone and one head of K logits, turned into soft labels by the mask softmax."""

    def __init__(self, backbone: str, in_channels: int, hierarchy: Hierarchy,
                 width: int | None = None) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone, feat = make_backbone(backbone, in_channels, width)
        self.head = _head(feat, hierarchy.num_aux)
        self.register_buffer("block_id", hierarchy.block_id(), persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mask_softmax(self.logits(x), y, self.block_id)
