"""The generator over a split: soft labels in a fixed batching, so anyone can recompute them bit-exactly.

Labels are computed over *rows* in split order, in batches of `batch_size` consecutive rows
starting at row 0: a row is a sample, or with views one (sample, view) pair, sample-major
(row = index * V + view). Batch composition can change float results (kernels pick
algorithms by batch size), so the reference computation and the exporter share this batching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from auxgen.data import Data, apply_views
from auxgen.export.pipeline import Chunk, SampleAssembler
from auxgen.export.sink import SplitSource
from auxgen.losses import block_entropy

# A label source, the stage an export's writers read from: (split, first row) -> batches of
# (first row, soft [b, K], hard [b], entropy [b]) in numpy, in the fixed batching, starting with
# the batch that holds that row. `local_batches` computes them here; a multi-process export
# gathers them from every process (auxgen.export.ranks.gather).
Rows = tuple[int, np.ndarray, np.ndarray, np.ndarray]
Batches = Callable[[SplitSource, int], Iterator[Rows]]


def _rows(images: torch.Tensor, primary: torch.Tensor, views: torch.Tensor | None, pad: int,
          r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and primary labels of rows r0..r1 (views applied when given as [N, V, 3])."""
    if views is None:
        return images[r0:r1], primary[r0:r1]
    v = views.shape[1]
    idx = torch.arange(r0, r1) // v
    return apply_views(images[idx], views.reshape(-1, 3)[r0:r1], pad), primary[idx]


@torch.inference_mode()
def iter_label_batches(generator: torch.nn.Module, images: torch.Tensor, primary: torch.Tensor,
                       device: torch.device | str, batch_size: int = 500, views: torch.Tensor | None = None,
                       pad: int = 0, start_row: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, float32 soft labels [b, K] on `device`) batch by batch, from the batch holding start_row.

    The first yielded batch may begin before start_row: batches always start at multiples of
    batch_size, so that a resumed export computes exactly what an uninterrupted one did.
    """
    n_rows = len(primary) * (views.shape[1] if views is not None else 1)
    first = (start_row // batch_size) * batch_size
    for r0 in range(first, n_rows, batch_size):
        r1 = min(r0 + batch_size, n_rows)
        x, y = _rows(images, primary, views, pad, r0, r1)
        yield r0, generator(x.to(device, non_blocking=True), y.to(device, non_blocking=True)).float()


def compute_soft_labels(generator: torch.nn.Module, images_uint8: torch.Tensor, primary: torch.Tensor,
                        device: torch.device | str, batch_size: int = 500) -> torch.Tensor:
    """The reference computation: float32 [N, K] soft labels on the CPU, eval mode, batches of batch_size rows.

    For exported views, pass the view images (`apply_views` of each sample repeated V times,
    sample-major) and the repeated primary labels: that is exactly what the exporter computes.
    """
    was_training = generator.training
    generator.eval()
    try:
        out = [soft.cpu() for _, soft in iter_label_batches(generator, images_uint8, primary, device, batch_size)]
    finally:
        generator.train(was_training)
    k = int(generator.block_id.numel()) if hasattr(generator, "block_id") else 0
    return torch.cat(out) if out else torch.zeros(0, k)


def hard_and_entropy(soft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """aux_hard (argmax, first on ties) and per-row entropy in nats, both from float32 labels."""
    return soft.argmax(dim=1), block_entropy(soft)


def local_batches(generator: torch.nn.Module, data: Data, device: torch.device | str, batch_size: int,
                  pad: int) -> Batches:
    """The label source of one process: the generator run here over a split's rows (views from the SplitSource)."""
    def batches(sp: SplitSource, start_row: int) -> Iterator[Rows]:
        split = getattr(data, sp.name)
        views = None if sp.views is None else torch.from_numpy(sp.views)
        for r0, soft in iter_label_batches(generator, split.images, split.labels, device, batch_size, views, pad,
                                           start_row):
            hard, ent = hard_and_entropy(soft)
            yield r0, soft.cpu().numpy(), hard.cpu().numpy(), ent.cpu().numpy()

    return batches


def sample_chunks(batches: Batches, sp: SplitSource, views: int, a: int, b: int) -> Iterator[Chunk]:
    """Samples a..b of a split as chunks of whole samples (with views, V consecutive rows per sample)."""
    if a >= b:
        return
    asm = SampleAssembler(sp.name, sp.primary, views, a)
    for r0, soft, hard, ent in batches(sp, a * max(views, 1)):
        for chunk in asm.add(r0, soft, hard, ent):
            if chunk.start + len(chunk) >= b:  # the last one wanted: later batches are not computed
                yield chunk.head(b - chunk.start)
                return
            yield chunk
