"""pipelines/: each reader on a tiny export, the view rule against auxgen's, and no auxgen at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import numpy_reader, onnx_refresh, refresh, torch_frozen, wds_stream  # noqa: E402

PIPELINES = ("torch_frozen", "wds_stream", "numpy_reader", "refresh", "onnx_refresh", "parquet_reader")


def write_reference_h5(path: Path, n: int = 40, psi: tuple[int, ...] = (2, 3, 1), views: int = 0) -> None:
    """A small export written straight from docs/format.md, independent of auxgen's exporter."""
    rng = np.random.default_rng(0)
    k, offsets = sum(psi), np.cumsum((0, *psi[:-1]))
    with h5py.File(path, "w") as f:
        f.attrs.update(format="auxgen-labels", format_version=1, psi=np.array(psi), num_primary=len(psi),
                       num_aux=k, dtype="float32", views=views, pad=2)
        g = f.create_group("train")
        primary = rng.integers(0, len(psi), n)
        shape = (n, views, k) if views else (n, k)
        soft = np.zeros(shape, np.float32)
        for i, p in enumerate(primary):
            w = rng.random((*shape[1:-1], psi[p])).astype(np.float32)
            soft[i, ..., offsets[p]:offsets[p] + psi[p]] = w / w.sum(-1, keepdims=True)
        g["keys"] = [f"toy/train/{i:06d}" for i in range(n)]
        g["index"], g["primary"], g["aux_soft"] = np.arange(n), primary, soft
        g["aux_hard"] = soft.argmax(-1)
        g["entropy"] = -(soft * np.log(np.where(soft > 0, soft, 1))).sum(-1)
        if views:
            g["views"] = rng.integers(0, 2, (n, views, 3))


@pytest.fixture(scope="module")
def export(tiny_run, tmp_path_factory):
    from auxgen.export import export_labels

    root = tmp_path_factory.mktemp("pipelines")
    export_labels(tiny_run, root / "l.h5", "hdf5", generator_formats="pt2,onnx")
    export_labels(tiny_run, root / "full", "wds", shard_size="100KB", generator_formats="pt2,onnx")
    export_labels(tiny_run, root / "labels", "wds", images=False)
    return root


def decreases(losses: list[float]) -> bool:
    k = max(len(losses) // 4, 1)
    return np.mean(losses[-k:]) < np.mean(losses[:k])


def test_view_rule_matches_auxgen():
    from auxgen.data import apply_views, draw_views

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 7, 9), dtype=torch.uint8, generator=g)
    views = draw_views(16, 3, g)
    ref = apply_views(images, views, 3)
    for i in range(16):
        assert torch.equal(torch_frozen.apply_view(images[i], views[i], 3), ref[i])
        assert np.array_equal(numpy_reader.apply_view(images[i].numpy(), views[i].tolist(), 3), ref[i].numpy())
    assert torch.equal(refresh.apply_views(images, views, 3), ref)


def test_numpy_reader_covers_rows_shards_and_views(tmp_path):
    write_reference_h5(tmp_path / "r.h5")
    lf = numpy_reader.LabelFile(str(tmp_path / "r.h5"))
    seen = np.concatenate([b["index"] for b in lf.batches("train", 7, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == list(range(40))
    parts = [np.concatenate([b["index"] for b in lf.batches("train", 5, shuffle=True, seed=1, shard=(r, 3))])
             for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    with h5py.File(tmp_path / "r.h5") as f:
        soft = f["train/aux_soft"][()]
    b = next(lf.batches("train", 40))
    assert np.array_equal(b["aux_soft"], soft) and b["aux_soft"].dtype == np.float32
    write_reference_h5(tmp_path / "v.h5", views=3)
    lv = numpy_reader.LabelFile(str(tmp_path / "v.h5"))
    with h5py.File(tmp_path / "v.h5") as f:
        vsoft, vviews = f["train/aux_soft"][()], f["train/views"][()]
    b = next(lv.batches("train", 40, seed=5))
    for i, row in enumerate(b["index"]):  # the chosen view's label goes with that view
        j = [v for v in range(3) if np.array_equal(vviews[row, v], b["view"][i]) and
             np.array_equal(vsoft[row, v], b["aux_soft"][i])]
        assert j


def test_numpy_reader_trains_on_a_real_export(export, tiny_run):
    from auxgen.run import load_run, load_run_data

    data = load_run_data(load_run(tiny_run))
    lf = numpy_reader.LabelFile(str(export / "l.h5"))
    losses = numpy_reader.fit_softmax(lf, data.train.images.numpy(), steps=20, batch_size=64)
    assert decreases(losses)


def test_torch_frozen_pairs_by_key_and_trains(export, tiny_run):
    from auxgen.run import load_run, load_run_data

    data = load_run_data(load_run(tiny_run))
    ds = torch_frozen.FrozenLabels(torch_frozen.digits_dataset(), export / "l.h5", "train")
    with h5py.File(export / "l.h5") as f:
        index, soft = f["train/index"][()], f["train/aux_soft"][()]
    for j in (0, 7, len(ds) - 1):
        image, primary, aux = ds[j]
        assert torch.equal(image, data.train.images[index[j]])  # the key found the right image
        assert primary == int(data.train.labels[index[j]])
        assert torch.equal(aux, torch.from_numpy(soft[j]))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, collate_fn=torch_frozen.collate)
    model = torch_frozen.TwoHeadNet(1, ds.num_primary, ds.num_aux, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    assert decreases(torch_frozen.train_epoch(model, loader, opt, gamma=2.0))


def test_wds_stream_full_and_joined_shards(export):
    with h5py.File(export / "l.h5") as f:
        keys = [k.decode() for k in f["train/keys"][()]]
        ref = dict(zip(keys, f["train/aux_soft"][()], strict=True))
    full = wds_stream.shard_urls(export / "full", "train")
    assert len(full) > 2
    table = wds_stream.label_table(wds_stream.shard_urls(export / "labels", "train"))
    seen = {}
    for labels in (None, table):
        total = 0
        for x, y, _aux in wds_stream.stream(full, 50, shuffle=100, labels=labels):
            assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8)
            total += len(y)
        seen[labels is None] = total
    assert seen == {True: len(keys), False: len(keys)}
    # the join by key gives the same labels the HDF5 file holds for that key
    wkey = next(iter(table))
    key = "digits/train/" + wkey.rsplit("/", 1)[1]
    assert np.array_equal(table[wkey][1], ref[key])
    # nodes get disjoint shards that cover the split
    counts = [sum(len(b[1]) for b in wds_stream.stream(full, 50, shuffle=0, rank=r, world_size=2)) for r in (0, 1)]
    assert sum(counts) == len(keys) and min(counts) > 0


def test_wds_stream_multiworker_training(export):
    urls = wds_stream.shard_urls(export / "full", "train")
    torch.manual_seed(0)
    model = torch_frozen.TwoHeadNet(1, 10, 50, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = wds_stream.loader(wds_stream.stream(urls, 32, shuffle=200, partial=False), num_workers=2)
    losses = torch_frozen.train_epoch(model, batches, opt)
    assert len(losses) >= 1400 // 32 - 4 and decreases(losses)


@pytest.fixture(scope="module")
def other_generators(tiny_run, tmp_path_factory):
    """The run's generator with other weights, as .pt2 and .onnx files: "a newer export" for the refresh loops."""
    from auxgen.export.generator_files import save_generator
    from auxgen.run import load_run

    root = tmp_path_factory.mktemp("other")
    gen = load_run(tiny_run).generator
    with torch.no_grad():
        for p in gen.parameters():
            p.mul_(1.1)
    example = (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    for fmt in ("pt2", "onnx"):
        save_generator(gen, root / f"generator.{fmt}", fmt, {}, example)
    return root


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_refresh_labels_its_views_and_picks_up_a_new_generator(export, other_generators, tmp_path, fmt):
    images, primary, frozen = refresh.load_shard_images(export / "full")
    gen_path = tmp_path / f"generator.{fmt}"
    gen_path.write_bytes((export / "full" / f"generator.{fmt}").read_bytes())
    t = refresh.RefreshedTargets(images, primary, gen_path, pad=1, every=2, views=2, initial=frozen)
    assert t.maybe_refresh(2) is None
    log = t.maybe_refresh(1)
    assert log is not None and not log["switched_generator"] and log["tv"] >= 0
    reference = torch.export.load(str(export / "full" / "generator.pt2")).module()
    with torch.inference_mode():
        x = refresh.apply_views(images[:5], t.views[:5, 1], 1)
        assert torch.allclose(reference(x, primary[:5]), t.targets[:5, 1], atol=1e-5)
    gen_path.write_bytes((other_generators / f"generator.{fmt}").read_bytes())
    log = t.maybe_refresh(3)
    assert log["switched_generator"] and log["tv"] > 0
    x, y, aux = t.batch(torch.arange(8))
    assert x.shape == (8, 1, 8, 8) and aux.shape == (8, 50)


def test_onnx_refresh_matches_and_picks_up_a_new_generator(export, other_generators, tmp_path):
    """The numpy + onnxruntime loop: its view rule is auxgen's, its targets the .pt2 program's."""
    from auxgen.data import apply_views, draw_views

    g = torch.Generator().manual_seed(0)
    im = torch.randint(0, 256, (16, 3, 7, 9), dtype=torch.uint8, generator=g)
    v = draw_views(16, 3, g)
    assert np.array_equal(onnx_refresh.apply_views(im.numpy(), v.numpy(), 3), apply_views(im, v, 3).numpy())
    images, primary, frozen = refresh.load_shard_images(export / "full")
    gen_path = tmp_path / "generator.onnx"
    gen_path.write_bytes((export / "full" / "generator.onnx").read_bytes())
    t = onnx_refresh.OnnxRefreshedTargets(images.numpy(), primary.numpy(), gen_path, pad=1, every=2, views=2,
                                          initial=frozen.numpy(), threads=1)
    log = t.maybe_refresh(1)
    assert not log["switched_generator"] and log["tv"] >= 0
    reference = torch.export.load(str(export / "full" / "generator.pt2")).module()
    x = torch.from_numpy(onnx_refresh.apply_views(images[:40].numpy(), t.views[:40, 0], 1))
    with torch.inference_mode():
        assert np.abs(reference(x, primary[:40]).numpy() - t.targets[:40, 0]).max() <= 1e-5
    outside = np.arange(50)[None, :] // 5 != primary.numpy()[:, None]  # psi 5: class c owns 5c..5c+4
    assert (t.targets[:, 0][outside] == 0).all() and (t.targets[:, 1][outside] == 0).all()
    gen_path.write_bytes((other_generators / "generator.onnx").read_bytes())
    assert t.maybe_refresh(3)["switched_generator"]
    x, y, aux = t.batch(np.arange(8))
    assert x.shape == (8, 1, 8, 8) and x.dtype == np.uint8 and aux.shape == (8, 50) and y.dtype == np.int64


ONNX_REFRESH_NO_TORCH = """
import runpy, sys

class Block:
    # torch (and auxgen) made unimportable: any attempt fails, and is remembered
    def __init__(self):
        self.asked = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "auxgen"):
            self.asked.append(name)
            raise ImportError(f"{name} is blocked")
        return None

block = Block()
sys.meta_path.insert(0, block)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, script.rsplit("/", 1)[0])
runpy.run_path(script, run_name="__main__")
assert not block.asked and "torch" not in sys.modules, block.asked
print("torch-free")
"""


def test_onnx_refresh_runs_without_torch(tiny_run, export, tmp_path):
    """`python pipelines/onnx_refresh.py` with torch blocked: numpy + onnxruntime + h5py only."""
    from auxgen.run import load_run, load_run_data

    images = tmp_path / "train.npy"  # the train split's images in split order, as the script documents
    np.save(images, load_run_data(load_run(tiny_run)).train.images.numpy())
    r = subprocess.run([sys.executable, "-c", ONNX_REFRESH_NO_TORCH, str(ROOT / "pipelines" / "onnx_refresh.py"),
                        "--labels", str(export / "l.h5"), "--images", str(images), "--epochs", "3", "--every", "2",
                        "--threads", "1"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("refresh {") == 2 and "epoch 3: loss" in r.stdout and "torch-free" in r.stdout


def test_refresh_script_loss_decreases(export):
    result = refresh.main(["--shards", str(export / "full"), "--epochs", "3", "--every", "2", "--width", "8"])
    assert len(result["refreshes"]) == 2 and result["epochs"][-1] < result["epochs"][0]


def test_pipelines_import_no_auxgen():
    for name in PIPELINES:
        tree = ast.parse((ROOT / "pipelines" / f"{name}.py").read_text())
        mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        mods += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in mods if m.split(".")[0] == "auxgen"], name


def test_scripts_run_with_auxgen_blocked(export):
    """`python pipelines/X.py` with `import auxgen` made impossible."""
    # what `python SCRIPT` does (script folder first on sys.path), with auxgen made unimportable
    block = "import os, sys, runpy; sys.modules['auxgen'] = None; sys.argv = sys.argv[1:]; " \
            "sys.path.insert(0, os.path.dirname(sys.argv[0])); runpy.run_path(sys.argv[0], run_name='__main__')"
    for name in PIPELINES:
        r = subprocess.run([sys.executable, "-c", block, str(ROOT / "pipelines" / f"{name}.py"), "--help"],
                           capture_output=True, text=True, cwd="/")
        assert r.returncode == 0 and "usage" in r.stdout, (name, r.stderr)
    r = subprocess.run([sys.executable, "-c", block, str(ROOT / "pipelines" / "torch_frozen.py"), "--labels",
                        str(export / "l.h5"), "--dataset", "digits", "--epochs", "1", "--width", "4"],
                       capture_output=True, text=True, cwd="/", env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert r.returncode == 0 and "test primary accuracy" in r.stdout, r.stderr


IMPORT_BLOCKED = """
import importlib, sys

class Block:
    # a meta-path finder that fails every import of the blocked packages, and remembers it was asked
    def __init__(self, names):
        self.names, self.asked = set(names), []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            self.asked.append(name)
            raise ImportError(f"{name} is blocked")
        return None

block = Block(sys.argv[2].split(","))
sys.meta_path.insert(0, block)
sys.path.insert(0, sys.argv[1])
for name in sys.argv[3].split(","):
    importlib.import_module("pipelines." + name)
assert not block.asked, block.asked
"""


@pytest.mark.parametrize("blocked, modules", [
    ("auxgen", ",".join(sorted(p.stem for p in (ROOT / "pipelines").glob("*.py") if p.stem != "__init__"))),
    ("auxgen,torch,torchvision,PIL,webdataset", "numpy_reader,onnx_refresh"),  # numpy + h5py (+ onnxruntime)
])
def test_pipelines_import_with_packages_blocked(blocked, modules):
    r = subprocess.run([sys.executable, "-c", IMPORT_BLOCKED, str(ROOT), blocked, modules],
                       capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr


def test_example_configs_load():
    from auxgen.config import resolve_config

    cfg = resolve_config(ROOT / "examples" / "configs" / "cifar100_20_maxl.toml", {})
    assert (cfg.dataset, cfg.primary_level, cfg.psi, cfg.backbone, cfg.epochs, cfg.batch_size, cfg.lr, cfg.gen_lr) == \
        ("cifar100", 20, "5", "vgg16", 200, 100, 0.01, 1e-3)
    for f in sorted((ROOT / "examples" / "configs").glob("*.toml")):
        resolve_config(f, {})  # every example config is valid
