"""Refreshed targets without torch: the exported ONNX generator in onnxruntime, numpy in and out (h5py to read
the export). For JAX, TensorFlow, or any framework that takes numpy arrays.

`auxgen export ... --generator` writes `X.h5.generator.onnx` beside an HDF5 export (`generator.onnx` in
a shard folder): uint8 images [B, C, H, W] and int64 primary labels [B] in, float32 soft labels [B, K]
out (normalisation and mask softmax inside). Every `every` epochs this loop draws new augmented views
of each image, labels exactly those views, and logs how far the targets moved; a newer generator
written to the same path is picked up (the file is re-read when its contents change).

    targets = OnnxRefreshedTargets(images, primary, "labels/c100.h5.generator.onnx", pad=4, every=5, views=2)
    for epoch in range(1, epochs + 1):
        log = targets.maybe_refresh(epoch)           # {"tv": ..., "hard_changed": ...} when it refreshed
        for idx in np.array_split(rng.permutation(len(primary)), max(1, len(primary) // 256)):
            x, y, aux = targets.batch(idx)           # numpy: uint8 views, int64 primary, float32 [B, K] targets
            state = train_step(state, jnp.asarray(x), jnp.asarray(y), jnp.asarray(aux))   # or tf.convert_to_tensor

Script (images: a .npy of the train split's uint8 images [N, C, H, W] in split order, as for numpy_reader, or
--image-root for an ImageFolder export: its folder, decoded as auxgen did):
    python pipelines/onnx_refresh.py --labels labels/c100.h5 --images train_images.npy --epochs 4 --every 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script (python pipelines/onnx_refresh.py): import pipelines from the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import _common  # noqa: E402
from pipelines._common import apply_views  # noqa: E402  (the view rule, for numpy batches too)
from pipelines.numpy_reader import SoftmaxHeads  # noqa: E402


def _load_problem(path: str | Path, e: Exception) -> str:
    """One line on why onnxruntime refused the model at `path`."""
    text = " ".join(str(e).split())
    if "external" in text.lower():
        return (f"refusing {path}: it keeps tensors in another file (external data), which an exported generator "
                f"never does; export the generator again")
    return f"{path} cannot be loaded as an ONNX generator by onnxruntime: {text[:160]}"


class OnnxGenerator:
    """An exported `.onnx` generator in an onnxruntime CPU session: __call__(images uint8, primary int64) -> [B, K]."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default (all cores)
        data = _common.check_regular(path).read_bytes()  # read once: what is checked is what runs
        try:  # from bytes: onnxruntime has no folder to resolve external data in, so it reads no other file
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types (Fail, InvalidProtobuf, ...) derive from Exception
            raise _common.ExportError(_load_problem(path, e)) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        meta = self.session.get_modelmeta().custom_metadata_map.get("auxgen.json", "{}")
        self.meta: dict[str, Any] = json.loads(meta)  # psi, num_aux, checkpoint_sha256, image_shape, ...

    def __call__(self, images: np.ndarray, primary: np.ndarray, batch_size: int = 500) -> np.ndarray:
        out = [self.session.run(None, {self.inputs[0]: np.ascontiguousarray(images[s:s + batch_size], np.uint8),
                                       self.inputs[1]: np.asarray(primary[s:s + batch_size], np.int64)})[0]
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, int(self.meta.get("num_aux", 0))), np.float32)


class OnnxRefreshedTargets:
    """Per-sample views and their generator targets, redrawn and recomputed every `every` epochs (numpy only).

    The same loop as refresh.RefreshedTargets: between refreshes each epoch trains on one of the
    `views` stored views of each sample (a random one), always with that view's own target.
    `initial` (e.g. the export's frozen labels, [N, K]) is used with the identity view until the
    first refresh, if given.
    """

    def __init__(self, images: np.ndarray, primary: np.ndarray, generator: str | Path, pad: int, every: int = 5,
                 views: int = 2, initial: np.ndarray | None = None, seed: int = 0, threads: int = 0) -> None:
        self.images, self.primary, self.pad = images, np.asarray(primary, np.int64), pad
        self.every, self.n_views, self.threads = every, views, threads
        self.path = Path(generator)
        self.gen: OnnxGenerator | None = None
        self.digest = ""
        self.rng = np.random.default_rng(seed)
        self.views = np.tile(np.array([pad, pad, 0]), (len(images), 1, 1))  # identity view
        self.targets = initial[:, None].astype(np.float32) if initial is not None else None
        self.refreshes: list[dict[str, Any]] = []

    def _load(self) -> bool:
        """(Re)load the generator when its file changed; True when a different generator was loaded."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        if digest == self.digest:
            return False
        self.gen = OnnxGenerator(self.path, self.threads)
        switched = bool(self.digest)
        self.digest = digest
        return switched

    def refresh(self, epoch: int = 0) -> dict[str, Any]:
        """Draw new views for every sample, label them, and log how far the targets moved."""
        switched = self._load()
        assert self.gen is not None
        n, v = len(self.images), self.n_views
        views = np.concatenate([self.rng.integers(0, 2 * self.pad + 1, (n, v, 2)),
                                self.rng.integers(0, 2, (n, v, 1))], axis=2)
        new = np.stack([self.gen(apply_views(self.images, views[:, j], self.pad), self.primary)
                        for j in range(v)], axis=1)
        log: dict[str, Any] = {"epoch": epoch, "switched_generator": switched, "digest": self.digest[:12]}
        if self.targets is not None:
            old_mean, new_mean = self.targets.mean(1), new.mean(1)
            log["tv"] = float(0.5 * np.abs(old_mean - new_mean).sum(1).mean())
            log["hard_changed"] = float((old_mean.argmax(1) != new_mean.argmax(1)).mean())
        log["view_spread"] = float(0.5 * np.abs(new - new.mean(1, keepdims=True)).sum(2).mean())
        self.views, self.targets = views, new
        self.refreshes.append(log)
        return log

    def maybe_refresh(self, epoch: int) -> dict[str, Any] | None:
        """Refresh at epochs 1, 1 + every, 1 + 2*every, ... (epochs count from 1)."""
        return self.refresh(epoch) if (epoch - 1) % self.every == 0 else None

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images (a random stored view each), primary labels and that view's targets for rows idx."""
        assert self.targets is not None, "call refresh() first, or pass initial targets"
        j = self.rng.integers(0, self.views.shape[1], len(idx))
        x = apply_views(self.images[idx], self.views[idx, j], self.pad)
        return x, self.primary[idx], self.targets[idx, j]


def _train_images(args: argparse.Namespace, attrs: dict[str, Any], train: dict[str, Any]) -> np.ndarray:
    """The train split's images in the export's row order, from --images (split order) or --image-root."""
    if args.image_root:
        return _common.folder_images(args.image_root, attrs, train["keys"], train["index"])[train["index"]]
    return np.load(args.images)[train["index"]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train a numpy model with auxiliary targets refreshed by the exported "
                                             "ONNX generator (onnxruntime; no torch).")
    ap.add_argument("--labels", required=True, help="HDF5 export written with --generator")
    images = ap.add_mutually_exclusive_group(required=True)
    images.add_argument("--images", help="a .npy of the train split's uint8 images [N, C, H, W], in split order")
    images.add_argument("--image-root", help="an ImageFolder export: its folder, whose images are decoded as auxgen "
                                             "did (instead of --images)")
    ap.add_argument("--generator", help="the .onnx generator [default: LABELS.generator.onnx]")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--every", type=int, default=2, help="refresh the targets every N epochs")
    ap.add_argument("--views", type=int, default=2, help="views drawn and labelled per sample at each refresh")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2.0, help="step size on standardised pixels [default: 2.0]")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.generator:
        generator = Path(args.generator)
    else:  # the one the export's manifest lists, inside its folder, with a matching sha256
        labels = Path(args.labels)
        found = _common.listed_generator(labels.parent, _common.read_manifest(f"{labels}.manifest.json"), ("onnx",))
        generator = found[0] if found else labels.with_name(f"{labels.name}.generator.onnx")
    if not generator.is_file():
        raise SystemExit(f"error: no ONNX generator at {generator}; export with --generator")
    with _common.open_export(args.labels) as f:
        attrs = _common.read_attrs(f)
        train = _common.read_split(f, "train", ("index", "primary", "aux_soft"))
    images = _train_images(args, attrs, train)
    frozen = train["aux_soft"].astype(np.float32)
    targets = OnnxRefreshedTargets(images, train["primary"], generator, int(attrs.get("pad", 0)), args.every,
                                   args.views, initial=frozen if frozen.ndim == 2 else None, seed=args.seed,
                                   threads=args.threads)
    # a two-head linear softmax model in numpy: the point is the targets, not the model
    model = SoftmaxHeads(images, int(attrs["num_primary"]), int(attrs["num_aux"]), args.seed)
    rng = np.random.default_rng(args.seed)
    batch_size = max(1, min(args.batch_size, len(images)))  # a split smaller than a batch still trains
    result: dict[str, Any] = {"epochs": [], "refreshes": targets.refreshes}
    for epoch in range(1, args.epochs + 1):
        log = targets.maybe_refresh(epoch)
        if log is not None:
            print("refresh " + json.dumps(log), flush=True)
        order = rng.permutation(len(images))
        losses = [model.step(*targets.batch(order[s:s + batch_size]), args.lr)
                  for s in range(0, len(order) - batch_size + 1, batch_size)]
        result["epochs"].append(float(np.mean(losses)))
        print(f"epoch {epoch}: loss {result['epochs'][-1]:.4f}", flush=True)
    return result


if __name__ == "__main__":
    _common.run_main(main)
