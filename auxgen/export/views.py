"""Augmented views for `--views N`: seeded draws of the training transform, stored beside their labels."""

from __future__ import annotations

import torch

from auxgen.data import apply_views, draw_views


def draw_split_views(n: int, views: int, pad: int, seed: int) -> torch.Tensor:
    """(dy, dx, flip) for `views` views of each of n samples: int64 [n, views, 3].

    Each split draws from its own `torch.Generator().manual_seed(seed)`, sample-major, so a
    split's views do not depend on which other splits were exported.
    """
    return draw_views(n * views, pad, torch.Generator().manual_seed(seed)).reshape(n, views, 3)


def expand_views(images: torch.Tensor, primary: torch.Tensor, views: torch.Tensor,
                 pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All view images [N*V, C, H, W] and their primary labels, sample-major: the rows the exporter labels."""
    v = views.shape[1]
    return (apply_views(images.repeat_interleave(v, dim=0), views.reshape(-1, 3), pad),
            primary.repeat_interleave(v))
