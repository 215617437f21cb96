"""Refreshed targets: every N epochs, recompute the auxiliary targets for this loop's own augmented views.

Frozen labels belong to the stored (unaugmented) image. With the exported generator (`auxgen export
--generator`: `generator.pt2` and `generator.onnx` in a shard folder, `X.h5.generator.pt2` and
`X.h5.generator.onnx` beside an HDF5 file) a downstream loop can instead label exactly the views it
trains on, and pick up a newer export of the generator when one is written (the file is re-read when
its contents change). A `.pt2` file is loaded with `torch.export.load`, a `.onnx` file runs in
onnxruntime (a `.pt` TorchScript file of an older export with the deprecated `torch.jit.load`).
Without torch, see onnx_refresh.py.

    targets = RefreshedTargets(images, primary, "shards/c100/generator.pt2", pad=4, every=5, views=2)
    for epoch in range(1, epochs + 1):
        log = targets.maybe_refresh(epoch)           # {"tv": ..., "hard_changed": ...} when it refreshed
        for idx in batches_of_indices:
            x, y, aux = targets.batch(idx)           # a stored view of each image and its own target
            ...

Script:  python pipelines/refresh.py --shards shards/c100 --epochs 6 --every 2
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as a script (python pipelines/refresh.py): import pipelines from the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines._common import apply_views, check_pt2, check_regular, listed_generator, read_manifest, run_main  # noqa: E402
from pipelines.torch_frozen import TwoHeadNet, soft_focal_loss  # noqa: E402
from pipelines.wds_stream import shard_urls, stream  # noqa: E402

Labeller = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_generator(path: str | Path, data: bytes | None = None) -> Labeller:
    """An exported generator file as a function (uint8 images [B, C, H, W], int64 primary [B]) -> soft labels [B, K].

    By suffix: .pt2 (torch.export), .onnx (onnxruntime on the CPU), .pt (TorchScript, deprecated: it is
    code, load only your own). The bytes (`data`, or the file's, read once) are what is checked and loaded:
    a .pt2 holding anything that could run code on load is refused (`check_pt2`).
    """
    path = Path(path)
    data = check_regular(path).read_bytes() if data is None else data
    if path.suffix == ".pt2":
        check_pt2(path, data)
        module = torch.export.load(io.BytesIO(data)).module()
        return lambda x, y: module(x, y)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {names[0]: x.cpu().numpy(), names[1]: y.cpu().long().numpy()})[0]
            return torch.from_numpy(out)

        return run
    if path.suffix == ".pt":
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    raise ValueError(f"{path}: expected a generator file ending in .pt2, .onnx or .pt")


def find_generator(folder: str | Path) -> Path | None:
    """The generator file a shard folder's manifest lists (.pt2 first, then .onnx), checked against its sha256,
    or None when it lists none. A file at a generator's name that the manifest does not list is not used."""
    found = listed_generator(folder, read_manifest(Path(folder) / "manifest.json"))
    return None if found is None else found[0]


class RefreshedTargets:
    """Per-sample views and their generator targets, redrawn and recomputed every `every` epochs.

    Between refreshes each epoch trains on one of the `views` stored views of each sample (a
    random one), always with that view's own target. `initial` (e.g. the export's frozen labels,
    [N, K]) is used with the identity view until the first refresh, if given.
    """

    def __init__(self, images: torch.Tensor, primary: torch.Tensor, generator: str | Path, pad: int,
                 every: int = 5, views: int = 2, initial: torch.Tensor | None = None, seed: int = 0,
                 batch_size: int = 500) -> None:
        self.images, self.primary, self.pad = images, primary.long(), pad
        self.every, self.n_views, self.batch_size = every, views, batch_size
        self.path = Path(generator)
        self.gen: Labeller | None = None
        self.digest = ""
        self.rng = torch.Generator().manual_seed(seed)
        n = len(images)
        self.views = torch.tensor([pad, pad, 0]).repeat(n, 1, 1)  # identity view
        self.targets = initial[:, None].float() if initial is not None else None
        self.refreshes: list[dict[str, Any]] = []

    def _load(self) -> bool:
        """(Re)load the generator when its file changed; True when a different generator was loaded."""
        data = check_regular(self.path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest == self.digest:
            return False
        self.gen = load_generator(self.path, data)
        switched = bool(self.digest)
        self.digest = digest
        return switched

    @torch.inference_mode()
    def _label(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.gen(x[s:s + self.batch_size], y[s:s + self.batch_size]).float()
                          for s in range(0, len(x), self.batch_size)])

    def refresh(self, epoch: int = 0) -> dict[str, Any]:
        """Draw new views for every sample, label them, and log how far the targets moved."""
        switched = self._load()
        n, v = len(self.images), self.n_views
        offsets = torch.randint(0, 2 * self.pad + 1, (n, v, 2), generator=self.rng)
        flips = torch.randint(0, 2, (n, v, 1), generator=self.rng)
        views = torch.cat([offsets, flips], dim=2)
        new = torch.stack([self._label(apply_views(self.images, views[:, j], self.pad), self.primary)
                           for j in range(v)], dim=1)
        log: dict[str, Any] = {"epoch": epoch, "switched_generator": switched, "digest": self.digest[:12]}
        if self.targets is not None:
            # per sample, compare the mean target over its views before and after
            old_mean, new_mean = self.targets.mean(1), new.mean(1)
            log["tv"] = float(0.5 * (old_mean - new_mean).abs().sum(1).mean())
            log["hard_changed"] = float((old_mean.argmax(1) != new_mean.argmax(1)).float().mean())
        log["view_spread"] = float(0.5 * (new - new.mean(1, keepdim=True)).abs().sum(2).mean())
        self.views, self.targets = views, new
        self.refreshes.append(log)
        return log

    def maybe_refresh(self, epoch: int) -> dict[str, Any] | None:
        """Refresh at epochs 1, 1 + every, 1 + 2*every, ... (epochs count from 1)."""
        if (epoch - 1) % self.every == 0:
            return self.refresh(epoch)
        return None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (a random stored view each), primary labels and that view's targets for rows idx."""
        j = torch.randint(0, self.views.shape[1], (len(idx),), generator=self.rng)
        x = apply_views(self.images[idx], self.views[idx, j], self.pad)
        return x, self.primary[idx], self.targets[idx, j]


def load_shard_images(folder: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, primary labels and frozen aux_soft of a shard split with images, in memory, in shard order."""
    xs, ys, auxs = [], [], []
    for x, y, aux in stream(shard_urls(folder, split), batch_size=1024, shuffle=0):
        xs.append(x)
        ys.append(y)
        auxs.append(aux if aux.dim() == 2 else aux[:, 0])
    return torch.cat(xs), torch.cat(ys), torch.cat(auxs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train with auxiliary targets refreshed by the exported generator.")
    ap.add_argument("--shards", required=True, help="shard folder exported with images and --generator")
    ap.add_argument("--generator", help="generator file, .pt2 or .onnx [default: SHARDS/generator.pt2, else "
                                        "SHARDS/generator.onnx]")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--every", type=int, default=2, help="refresh the targets every N epochs")
    ap.add_argument("--views", type=int, default=2, help="views drawn and labelled per sample at each refresh")
    ap.add_argument("--pad", type=int, help="crop padding [default: the export's]")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--gamma", type=float, default=0.0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    manifest = read_manifest(Path(args.shards) / "manifest.json")
    pad = args.pad if args.pad is not None else int(manifest.get("pad", 0))
    generator = Path(args.generator) if args.generator else find_generator(args.shards)
    if generator is None or not generator.is_file():
        raise SystemExit(f"error: no generator at {generator or args.shards}; export with --generator")
    torch.manual_seed(args.seed)
    images, primary, frozen = load_shard_images(args.shards)
    targets = RefreshedTargets(images, primary, generator, pad, args.every, args.views, initial=frozen,
                               seed=args.seed)
    model = TwoHeadNet(images.shape[1], int(manifest["num_primary"]), int(manifest["num_aux"]), args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    g = torch.Generator().manual_seed(args.seed + 1)
    result: dict[str, Any] = {"epochs": [], "refreshes": targets.refreshes}
    for epoch in range(1, args.epochs + 1):
        log = targets.maybe_refresh(epoch)
        if log is not None:
            print("refresh " + json.dumps(log), flush=True)
        model.train()
        order, losses = torch.randperm(len(images), generator=g), []
        for s in range(0, len(order) - args.batch_size + 1, args.batch_size):
            x, y, aux = targets.batch(order[s:s + args.batch_size])
            pri, aux_logits = model(x)
            loss = soft_focal_loss(pri, y, args.gamma) + soft_focal_loss(aux_logits, aux, args.gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        result["epochs"].append(sum(losses) / len(losses))
        print(f"epoch {epoch}: loss {result['epochs'][-1]:.4f}", flush=True)
    return result


if __name__ == "__main__":
    run_main(main)
