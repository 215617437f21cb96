"""Stream auxgen WebDataset shards into the same training loop: for data too large for memory.

    from pipelines.wds_stream import shard_urls, stream, loader
    urls = shard_urls("shards/c100", "train")
    for epoch in range(200):
        batches = loader(stream(urls, batch_size=100, epoch=epoch), num_workers=4)
        train_epoch(model, batches, opt, gamma=2.0)      # pipelines.torch_frozen.train_epoch

Label-only shards (`auxgen export --no-images`) join image shards by key: pass
`labels=label_table(shard_urls("shards/c100-labels", "train"))` and the image shards' urls
(`key_fn` maps an image shard's __key__ to the export's, if they differ). Shards are split
across nodes (rank/world_size, or torch.distributed when initialised) and DataLoader workers.

Script:  python pipelines/wds_stream.py --shards shards/c100 --epochs 3
         python pipelines/wds_stream.py --shards shards/c100-labels --images YOUR_IMAGE_SHARDS --epochs 3
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

if not __package__:  # run as a script (python pipelines/wds_stream.py): import pipelines from the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines._common import (  # noqa: E402
    ExportError,
    check_regular,
    collate,
    decode_png,
    export_fits,
    export_image_shape,
    listed_files,
    open_image,
    present_image,
    run_main,
    take_view,
)
from pipelines._common import read_manifest as _read_manifest  # noqa: E402
from pipelines.torch_frozen import TwoHeadNet, accuracy, train_epoch  # noqa: E402

Sample = tuple[torch.Tensor, int, torch.Tensor]


def shard_urls(folder: str | Path, split: str = "train") -> list[str]:
    """The shards of one split, in order: those the manifest lists (each inside the folder), or for a folder
    without a manifest (image shards of your own) its SPLIT-*.tar files. Each must be a regular file."""
    folder = Path(folder)
    if (folder / "manifest.json").exists():
        paths = [p for p, _ in listed_files(_read_manifest(folder / "manifest.json"), folder)
                 if p.name.startswith(f"{split}-") and p.name.endswith(".tar")]
    else:
        paths = list(folder.glob(f"{split}-*.tar"))
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {folder}")
    for p in paths:
        if not p.exists():
            raise ExportError(f"{p} is listed in the manifest but missing; the export is incomplete")
        check_regular(p)
    return [str(p) for p in sorted(paths)]


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The export's manifest.json (checked: a regular file, a JSON object of format auxgen-labels)."""
    return _read_manifest(Path(folder) / "manifest.json")


def _labels(aux: Any, where: str, num_aux: int | None) -> np.ndarray:
    """One sample's stored labels, refused unless they are finite probabilities over K classes."""
    a = np.asarray(aux)
    if a.dtype.kind != "f" or a.ndim not in (1, 2) or (num_aux is not None and a.shape[-1] != num_aux):
        raise ExportError(f"{where}: aux.npy has shape {a.shape} ({a.dtype}), not [K] floats with K = {num_aux}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ExportError(f"{where}: aux.npy holds NaN, Inf or negative values; the export is damaged")
    return a


def label_table(urls: list[str]) -> dict[str, tuple[int, np.ndarray, Any]]:
    """__key__ -> (primary, aux_soft, views or None) from label-only (or full) shards; kept in memory."""
    table = {}
    for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        meta = json.loads(s["json"])
        aux = _labels(np.load(io.BytesIO(s["aux.npy"]), allow_pickle=False), s["__key__"], None)
        table[s["__key__"]] = (int(s["cls"]), aux, meta.get("views"))
    return table


def split_by_rank(rank: int | None, world_size: int | None) -> Callable[[Iterator], Iterator]:
    """A shard splitter for multi-node runs: explicit rank/world_size, else torch.distributed's."""
    if rank is None or world_size is None:
        return wds.split_by_node

    def split(src: Iterator) -> Iterator:
        for i, url in enumerate(src):
            if i % world_size == rank:
                yield url
    return split


def _shuffled(urls: list[str], seed: int) -> Callable[[Iterator], Iterator]:
    # every node and worker shuffles the shard list identically, then takes its own part
    def stage(src: Iterator) -> Iterator:
        items = list(src)
        random.Random(seed).shuffle(items)
        yield from items
    return stage


def stream(urls: list[str], batch_size: int = 64, shuffle: int = 1000, epoch: int = 0, seed: int = 0,
           labels: dict[str, tuple[int, np.ndarray, Any]] | None = None, key_fn: Callable[[str], str] | None = None,
           pad: int = 0, rank: int | None = None, world_size: int | None = None,
           partial: bool = True, num_aux: int | None = None, manifest: dict[str, Any] | None = None
           ) -> wds.DataPipeline:
    """Batches (images uint8 [B, C, H, W], primary [B], aux_soft [B, K] float32) from shards.

    Without `labels` the shards hold images and labels; with it, `urls` are image shards and each
    sample's labels come from the table by key. With --views exports a random stored view is
    applied (needs `pad`, the export's) together with that view's label. `epoch` reseeds the
    shard and sample shuffles so each epoch differs, identically on every node. Labels that are not
    finite non-negative floats (over `num_aux` classes, when given) are an ExportError. With the export's
    `manifest`, images of your own shards are presented as the labels saw them (`present_image`: fitted to
    its `image_shape` where auxgen decoded image files, else checked against it).
    """
    rng = random.Random(seed * 1000003 + epoch)
    shape, fits = (export_image_shape(manifest), export_fits(manifest)) if manifest else (None, False)

    def to_sample(s: dict[str, Any]) -> Sample:
        key = key_fn(s["__key__"]) if key_fn else s["__key__"]
        if labels is not None:
            if key not in labels:
                raise KeyError(f"image shard sample {s['__key__']} has no labels (key {key})")
            primary, aux, views = labels[key]
        else:
            primary, aux = int(s["cls"]), np.load(io.BytesIO(s["aux.npy"]), allow_pickle=False)
            views = json.loads(s["json"]).get("views")
        aux = _labels(aux, s["__key__"], num_aux)
        raw = s["png"] if "png" in s else s["jpg"]
        image = present_image(open_image(raw), shape, fits, s["__key__"]) if manifest else decode_png(raw)
        aux = torch.from_numpy(np.asarray(aux, dtype=np.float32))
        if views:
            image, aux = take_view(image, aux, views, rng.randrange(len(views)), pad)
        return image, primary, aux

    stages: list[Any] = [wds.SimpleShardList(urls)]
    if shuffle:
        stages.append(_shuffled(urls, seed + epoch))
    stages += [split_by_rank(rank, world_size), wds.split_by_worker, wds.tarfile_to_samples()]
    if shuffle:
        stages.append(wds.shuffle(shuffle, initial=min(shuffle, 100), rng=random.Random(seed + epoch)))
    stages += [wds.map(to_sample), wds.batched(batch_size, collation_fn=collate, partial=partial)]
    return wds.DataPipeline(*stages)


def loader(pipeline: wds.DataPipeline, num_workers: int = 0) -> wds.WebLoader:
    """A DataLoader over a batched pipeline: the shards are split among the workers."""
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train a two-head network from auxgen WebDataset shards.")
    ap.add_argument("--shards", required=True, help="export folder (with images, or label-only with --images)")
    ap.add_argument("--images", help="image shards to join with label-only --shards by key")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--gamma", type=float, default=0.0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--shuffle", type=int, default=1000, help="sample shuffle buffer (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    manifest = read_manifest(args.shards)  # the class counts come from it, never from a guess
    pad, num_aux = int(manifest.get("pad", 0)), manifest.get("num_aux")
    if not isinstance(manifest.get("num_primary"), int) or not isinstance(num_aux, int):
        raise ExportError(f"{args.shards}/manifest.json lacks num_primary/num_aux; the export is damaged")
    labels = label_table(shard_urls(args.shards, "train")) if args.images else None
    image_dir = args.images or args.shards
    urls = shard_urls(image_dir, "train")
    first = next(iter(stream(urls, 1, 0, labels=labels, pad=pad, num_aux=num_aux, manifest=manifest)))
    model = TwoHeadNet(first[0].shape[1], manifest["num_primary"], num_aux, args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    result: dict[str, Any] = {"epochs": []}
    for epoch in range(args.epochs):
        batches = loader(stream(urls, args.batch_size, args.shuffle, epoch, args.seed, labels, pad=pad,
                                partial=False, num_aux=num_aux, manifest=manifest), args.workers)
        losses = train_epoch(model, batches, opt, args.gamma)
        result["epochs"].append(sum(losses) / max(len(losses), 1))
        print(f"epoch {epoch + 1}: loss {result['epochs'][-1]:.4f} ({len(losses)} steps)", flush=True)
    try:
        test_urls = shard_urls(image_dir, "test")
        test_labels = label_table(shard_urls(args.shards, "test")) if args.images else None
        result["test_acc"] = accuracy(model, stream(test_urls, 256, 0, labels=test_labels, pad=pad,
                                                    manifest=manifest))
        print(f"test primary accuracy {100 * result['test_acc']:.2f}%")
    except FileNotFoundError:
        pass  # no test shards
    return result


if __name__ == "__main__":
    run_main(main)
