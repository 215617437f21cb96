"""auxgen export: exact labels in HDF5 and WebDataset shards, views, generator files, safety and resume."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from auxgen.data import apply_views
from auxgen.errors import AuxgenError
from auxgen.export import FORMAT_VERSION, compute_soft_labels, expand_views, export_labels, read_manifest, wds_key
from auxgen.export.format import parse_size
from auxgen.export.manifest import check_files
from auxgen.losses import block_entropy
from auxgen.run import load_run, load_run_data


@pytest.fixture(scope="module")
def loaded(tiny_run):
    run = load_run(tiny_run)
    return run, load_run_data(run)


def reference(loaded, split: str, batch_size: int = 500) -> torch.Tensor:
    run, data = loaded
    sp = getattr(data, split)
    return compute_soft_labels(run.generator, sp.images, sp.labels, run.device, batch_size)


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Samples of a shard with plain tarfile: {key: {extension: bytes}}."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            folder, _, base = m.name.rpartition("/")
            stem, _, ext = base.partition(".")  # the key ends at the first dot of the file name
            out.setdefault(f"{folder}/{stem}", {})[ext] = tf.extractfile(m).read()
    return out


def check_soft(soft: torch.Tensor, primary: torch.Tensor, psi: list[int]) -> None:
    block = torch.repeat_interleave(torch.arange(len(psi)), torch.tensor(psi))
    outside = block[None, :] != primary[:, None]
    assert (soft[outside] == 0).all()
    assert torch.allclose(soft.double().sum(1), torch.ones(len(soft), dtype=torch.float64), atol=1e-5)


# ------------------------------------------------------------------------------ HDF5
def test_hdf5_round_trip_is_bit_exact(tiny_run, loaded, tmp_path):
    out = tmp_path / "labels.h5"
    summary = export_labels(tiny_run, out)
    run, data = loaded
    assert summary["counts"] == {"train": len(data.train), "test": len(data.test)}
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "auxgen-labels" and f.attrs["format_version"] == FORMAT_VERSION
        assert list(f.attrs["psi"]) == list(run.hier.psi) and f.attrs["num_aux"] == run.hier.num_aux
        assert f.attrs["checkpoint_sha256"] == run.checkpoint_sha256
        assert json.loads(f.attrs["run_config"])["psi"] == list(run.hier.psi)
        assert f.attrs["dataset_fingerprint"] == data.fingerprint()
        assert f.attrs["test_acc"] == pytest.approx(run.recorded_test_acc())
        for split in ("train", "test"):
            g, sp = f[split], getattr(data, split)
            ref = reference(loaded, split)
            soft = torch.from_numpy(g["aux_soft"][:])
            assert soft.dtype == torch.float32 and torch.equal(soft, ref)
            assert [k.decode() for k in g["keys"][:]] == sp.keys
            assert np.array_equal(g["primary"][:], sp.labels.numpy())
            assert np.array_equal(g["index"][:], np.arange(len(sp)))
            assert np.array_equal(g["aux_hard"][:], ref.argmax(1).numpy())
            assert np.array_equal(g["entropy"][:], block_entropy(ref).numpy())
            check_soft(soft, sp.labels, list(run.hier.psi))
            assert g["aux_soft"].chunks is not None and g["aux_soft"].compression == "gzip"
            i = len(sp) // 2  # random access by index
            assert torch.equal(torch.from_numpy(g["aux_soft"][i]), ref[i])
    manifest = read_manifest(str(out) + ".manifest.json")
    assert manifest["kind"] == "hdf5" and manifest["counts"] == summary["counts"]
    assert manifest["checkpoint_sha256"] == run.checkpoint_sha256 and manifest["config_sha256"] == run.config_sha256
    assert check_files(manifest, out.parent) == []
    assert summary["stats"]["aux_usage_entropy"] <= summary["stats"]["aux_usage_entropy_max"] + 1e-9


def test_hdf5_float16_and_batch_size_recorded(tiny_run, loaded, tmp_path):
    out = tmp_path / "half.h5"
    export_labels(tiny_run, out, split="test", dtype="float16", batch_size=128)
    ref = reference(loaded, "test", batch_size=128)
    with h5py.File(out, "r") as f:
        assert list(f) == ["test"] and f.attrs["batch_size"] == 128
        assert f["test/aux_soft"].dtype == np.float16
        assert np.array_equal(f["test/aux_soft"][:], ref.half().numpy())
        assert np.array_equal(f["test/aux_hard"][:], ref.argmax(1).numpy())  # from the float32 labels


# ------------------------------------------------------------------------------ WebDataset
def test_wds_shards_read_with_stock_webdataset_and_tarfile(tiny_run, loaded, tmp_path):
    import webdataset as wds
    from PIL import Image

    run, data = loaded
    out = tmp_path / "shards"
    summary = export_labels(tiny_run, out, fmt="wds", split="test", max_count=100)
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [f"test-{i:06d}.tar" for i in range(4)]  # 359 samples, 100 per shard
    ref, sp = reference(loaded, "test"), data.test
    samples = list(wds.WebDataset([str(out / n) for n in names], shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [wds_key(k) for k in sp.keys]
    for i, s in enumerate(samples):
        assert s["cls"] == int(sp.labels[i])
        assert s["aux.npy"].dtype == np.float32 and np.array_equal(s["aux.npy"], ref[i].numpy())
        assert s["json"] == {"key": sp.keys[i], "split": "test", "index": i, "aux_hard": int(ref[i].argmax()),
                             "entropy": s["json"]["entropy"]}
        assert np.float32(s["json"]["entropy"]) == block_entropy(ref[i:i + 1])[0].numpy()
        img = np.asarray(Image.open(io.BytesIO(s["png"])))
        assert np.array_equal(img, sp.images[i, 0].numpy())  # lossless, no augmentation
    plain = {}
    for n in names:
        plain.update(read_tar(out / n))
    assert list(plain) == [wds_key(k) for k in sp.keys]
    first = plain[wds_key(sp.keys[0])]
    assert np.array_equal(np.load(io.BytesIO(first["aux.npy"])), ref[0].numpy())
    assert int(first["cls"]) == int(sp.labels[0])
    manifest = read_manifest(out / "manifest.json")
    assert [f["path"] for f in manifest["files"]] == names and check_files(manifest, out) == []
    assert manifest["counts"] == {"test": len(sp)} == summary["counts"]
    assert not (out / ".auxgen-export.json").exists()


def test_label_only_shards_join_image_shards_by_key(tiny_run, loaded, tmp_path):
    export_labels(tiny_run, tmp_path / "a", fmt="wds", split="test")
    export_labels(tiny_run, tmp_path / "b", fmt="wds", split="test", images=False, max_count=50)
    with_images = read_tar(tmp_path / "a" / "test-000000.tar")
    labels = {}
    for p in sorted((tmp_path / "b").glob("*.tar")):
        labels.update(read_tar(p))
    assert set(labels) == set(with_images) and len(labels) == len(loaded[1].test)
    for key, files in labels.items():
        assert "png" not in files and set(files) == {"cls", "aux.npy", "json"}
        for ext in files:
            assert files[ext] == with_images[key][ext]
    # keys are stable: a second export gives identical shards byte for byte
    export_labels(tiny_run, tmp_path / "c", fmt="wds", split="test")
    assert (tmp_path / "c" / "test-000000.tar").read_bytes() == (tmp_path / "a" / "test-000000.tar").read_bytes()


def test_shard_size_bounds_every_shard(tiny_run, tmp_path):
    out = tmp_path / "s"
    export_labels(tiny_run, out, fmt="wds", split="test", images=False, shard_size="100KB")
    sizes = [p.stat().st_size for p in sorted(out.glob("*.tar"))]
    assert len(sizes) > 3 and max(sizes) <= 100_000
    assert sum(read_manifest(out / "manifest.json")["counts"].values()) == 359


# ------------------------------------------------------------------------------ views and TorchScript
def test_views_reproduce_the_labelled_view(tiny_run, loaded, tmp_path):
    run, data = loaded
    out = tmp_path / "views.h5"
    export_labels(tiny_run, out, split="test", views=3, seed=7, batch_size=200)
    pad = run.meta["data"]["pad"]
    sp = data.test
    with h5py.File(out, "r") as f:
        g = f["test"]
        assert f.attrs["views"] == 3 and f.attrs["pad"] == pad
        views, soft = torch.from_numpy(g["views"][:]).long(), torch.from_numpy(g["aux_soft"][:])
        assert views.shape == (len(sp), 3, 3) and soft.shape == (len(sp), 3, run.hier.num_aux)
        assert g["aux_hard"].shape == (len(sp), 3) and g["entropy"].shape == (len(sp), 3)
    assert len({tuple(v) for v in views.reshape(-1, 3).tolist()}) > 1  # views differ
    x, y = expand_views(sp.images, sp.labels, views, pad)
    ref = compute_soft_labels(run.generator, x, y, run.device, batch_size=200)
    assert torch.equal(soft.reshape(-1, run.hier.num_aux), ref)
    # one view rebuilt from its stored parameters alone gives its stored label
    i, v = 5, 2
    img = apply_views(sp.images[i:i + 1], views[i, v:v + 1], pad)
    with torch.inference_mode():
        one = run.generator(img, sp.labels[i:i + 1])[0]
    assert torch.allclose(one, soft[i, v], atol=1e-6) and int(one.argmax()) == int(soft[i, v].argmax())
    # the same seed gives the same views in shards
    export_labels(tiny_run, tmp_path / "vw", fmt="wds", split="test", views=3, seed=7, images=False)
    first = read_tar(tmp_path / "vw" / "test-000000.tar")[wds_key(sp.keys[0])]
    meta = json.loads(first["json"])
    assert meta["views"] == views[0].tolist() and len(meta["aux_hard"]) == 3
    assert np.array_equal(np.load(io.BytesIO(first["aux.npy"])), soft[0].numpy())


def test_generator_files_match_and_are_in_the_manifest(tiny_run, loaded, tmp_path):
    """--generator: a .pt2 and a .onnx beside the HDF5 file, giving the stored labels, listed with hash and version."""
    from auxgen.export.generator_files import GENERATOR_ATOL, onnx_session

    run, data = loaded
    out = tmp_path / "g.h5"
    export_labels(tiny_run, out, split="test", generator_formats=("pt2", "onnx"))
    pt2, onnx = Path(f"{out}.generator.pt2"), Path(f"{out}.generator.onnx")
    assert not Path(f"{out}.generator.pt").exists()  # TorchScript only when asked for by name
    with h5py.File(out, "r") as f:
        stored = f["test/aux_soft"][:]
    x, y = data.test.images, data.test.labels
    module = torch.export.load(str(pt2)).module()  # no auxgen needed to run it
    session = onnx_session(onnx, threads=1)
    with torch.inference_mode():
        # the recorded batching (500 rows): the .pt2 program gives the stored labels bit for bit
        assert np.array_equal(torch.cat([module(x[s:s + 500], y[s:s + 500]) for s in range(0, len(y), 500)]).numpy(),
                              stored)
    onnx_out = session.run(None, {"images": x.numpy(), "primary": y.numpy()})[0]
    assert np.abs(onnx_out - stored).max() <= GENERATOR_ATOL["onnx"] and (onnx_out[stored == 0] == 0).all()
    manifest = read_manifest(f"{out}.manifest.json")
    assert manifest["generator"] is None  # the TorchScript-only field of earlier exports
    entries = {g["format"]: g for g in manifest["generators"]}
    assert entries["pt2"]["path"] == pt2.name and entries["onnx"]["path"] == onnx.name
    assert entries["pt2"]["torch_version"] == torch.__version__.split("+")[0] and entries["onnx"]["opset"] >= 17
    listed = {f["path"]: f for f in manifest["files"]}
    for g in entries.values():
        assert listed[g["path"]]["sha256"] == g["sha256"] and listed[g["path"]]["bytes"] == g["bytes"]
    assert not check_files(manifest, tmp_path)
    # a replaced export without --generator leaves no stale generator files behind; torchscript still on request
    export_labels(tiny_run, out, split="test", generator_formats="torchscript", force=True)
    assert not pt2.exists() and not onnx.exists()
    manifest = read_manifest(f"{out}.manifest.json")
    assert manifest["generator"] == f"{out.name}.generator.pt" and manifest["generators"][0]["format"] == "torchscript"


def test_generator_in_a_shard_folder(tiny_run, tmp_path):
    out = tmp_path / "shards"
    export_labels(tiny_run, out, "wds", split="test", images=False, generator_formats="onnx")
    manifest = read_manifest(out / "manifest.json")
    assert [g["path"] for g in manifest["generators"]] == ["generator.onnx"]
    assert (out / "generator.onnx").is_file() and not (out / "generator.pt2").exists()
    export_labels(tiny_run, out, "wds", split="test", images=False, force=True)  # replaced without --generator
    assert not (out / "generator.onnx").exists() and read_manifest(out / "manifest.json")["generators"] == []


def test_bad_generator_format_is_refused_before_writing(tiny_run, tmp_path):
    with pytest.raises(AuxgenError, match="--generator-format"):
        export_labels(tiny_run, tmp_path / "x.h5", generator_formats="pt2,keras")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ safety and resume
def test_refuses_to_overwrite_without_force(tiny_run, tmp_path):
    out = tmp_path / "l.h5"
    export_labels(tiny_run, out, split="test")
    before = out.read_bytes()
    with pytest.raises(AuxgenError, match="--force"):
        export_labels(tiny_run, out, split="test")
    assert out.read_bytes() == before
    export_labels(tiny_run, out, split="test", force=True, dtype="float16")
    with h5py.File(out, "r") as f:
        assert f["test/aux_soft"].dtype == np.float16
    assert not list(tmp_path.glob(".*.tmp"))
    shards = tmp_path / "w"
    export_labels(tiny_run, shards, fmt="wds", split="test", images=False)
    with pytest.raises(AuxgenError, match="--force"):
        export_labels(tiny_run, shards, fmt="wds", split="test", images=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AuxgenError, match="did not write"):
        export_labels(tiny_run, tmp_path / "mine", fmt="wds", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_interrupted_export_resumes_to_the_same_shards(tiny_run, tmp_path, monkeypatch):
    import auxgen.export.wds as wds_mod

    opts = dict(fmt="wds", images=True, max_count=150)
    export_labels(tiny_run, tmp_path / "full", **opts)
    calls = []

    def interrupt(record):
        calls.append(record["path"])
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(wds_mod, "_shard_written", interrupt)
    out = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        export_labels(tiny_run, out, **opts)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / ".auxgen-export.json").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == calls and not list(out.glob(".*.tmp"))
    with pytest.raises(AuxgenError, match="--resume"):
        export_labels(tiny_run, out, **opts)
    with pytest.raises(AuxgenError, match="max_count"):
        export_labels(tiny_run, out, **{**opts, "max_count": 99}, resume=True)
    (out / calls[1]).write_bytes(b"damaged")  # a finished shard whose hash no longer checks out
    summary = export_labels(tiny_run, out, **opts, resume=True)
    assert summary["resumed"] == {"train": 150}
    full = read_manifest(tmp_path / "full" / "manifest.json")
    part = read_manifest(out / "manifest.json")
    assert part["files"] == full["files"] and part["counts"] == full["counts"]
    assert check_files(part, out) == []  # the damaged shard was written again
    for f in full["files"]:
        assert (out / f["path"]).read_bytes() == (tmp_path / "full" / f["path"]).read_bytes()
    assert summary["stats"] == pytest.approx(export_labels(tiny_run, tmp_path / "again", **opts)["stats"])
    assert not (out / ".auxgen-export.json").exists()
    with pytest.raises(AuxgenError, match="nothing to resume"):
        export_labels(tiny_run, out, **opts, resume=True)


def test_mismatched_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)
    bad = tmp_path / "other.pt"
    torch.save({**state, "psi": [3] * 10}, bad)
    with pytest.raises(AuxgenError, match="psi"):
        export_labels(tiny_run, tmp_path / "x.h5", checkpoint=str(bad))
    torch.save({**state, "data_fingerprint": "0" * 64, "dataset": "cifar10"}, bad)
    with pytest.raises(AuxgenError, match="different data"):
        export_labels(tiny_run, tmp_path / "x.h5", checkpoint=str(bad))
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("kw, match", [({"fmt": "csv"}, "--format"), ({"split": "val"}, "--split"),
                                       ({"dtype": "int8"}, "--dtype"), ({"views": -1}, "--views"),
                                       ({"resume": True}, "wds only"), ({"fmt": "wds", "shard_size": "1KB"}, "64KiB"),
                                       ({"fmt": "wds", "shard_size": "lots"}, "256MB")])
def test_bad_options_are_errors(tiny_run, tmp_path, kw, match):
    with pytest.raises(AuxgenError, match=match):
        export_labels(tiny_run, tmp_path / "o", **kw)


def test_cli_export_and_one_line_errors(tiny_run, tmp_path, monkeypatch, capsys):
    from auxgen import cli

    out = tmp_path / "cli.h5"
    monkeypatch.setattr(sys, "argv", ["auxgen", "export", str(tiny_run), "--out", str(out), "--split", "test",
                                      "--quiet"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0 and out.is_file()
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--force" in err[0]


def test_cli_generator_format(tiny_run, tmp_path, monkeypatch, capsys):
    """--generator-format names the files (and implies --generator); an unknown name is a one-line error."""
    from auxgen import cli

    out = tmp_path / "g.h5"
    for fmt, code in (("pt2,keras", 2), ("torchscript", 0)):
        monkeypatch.setattr(sys, "argv", ["auxgen", "export", str(tiny_run), "--out", str(out), "--split", "test",
                                          "--quiet", "--generator-format", fmt])
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == code
    assert "'keras'" in capsys.readouterr().err
    assert [g["format"] for g in read_manifest(f"{out}.manifest.json")["generators"]] == ["torchscript"]


def test_parse_size():
    assert parse_size("256MB") == 256 * 10**6 and parse_size("1GB") == 10**9
    assert parse_size("512KiB") == 512 * 1024 and parse_size("4096") == 4096 and parse_size(None) is None
    with pytest.raises(AuxgenError):
        parse_size("12 parsecs")


def test_npy_payload_equals_numpy():
    from webdataset.writer import numpy_dumps

    from auxgen.export.wds import npy_header

    for shape, dtype in (((7,), np.float32), ((3, 5), np.float16)):
        a = np.random.default_rng(0).random(shape).astype(dtype)
        assert npy_header(shape, a.dtype) + a.tobytes() == numpy_dumps(a)


def test_summary_uses_the_shared_label_statistics(tiny_run, tmp_path, capsys):
    """One LabelStats for training and export: its field names in the summary, block usage in the table."""
    from auxgen.label_stats import LabelStats
    from auxgen.recipes.export import print_summary

    summary = export_labels(tiny_run, tmp_path / "l.h5", split="test")
    st = summary["stats"]
    assert {"aux_sample_entropy", "aux_sample_entropy_frac", "aux_block_usage_frac"} <= set(st)
    with h5py.File(tmp_path / "l.h5") as f:
        ref = LabelStats(summary["psi"])
        ref.add(torch.from_numpy(f["test/aux_soft"][()]), torch.from_numpy(f["test/primary"][()]))
    assert st == pytest.approx(ref.summary())
    print_summary(summary)
    table = capsys.readouterr().out
    assert "block usage" in table and "per-sample entropy" in table


# ------------------------------------------------------------------------------ structure
def test_file_names_come_from_one_place():
    from auxgen.export import layout

    ours = ["manifest.json", "generator.pt", "generator.pt2", "generator.onnx", ".auxgen-export.json",
            layout.rank_state_name(12), layout.shard_name("train", 1), layout.shard_name("test", 999999),
            layout.temp_path(Path("d"), layout.shard_name("train", 0)).name]
    theirs = ["notes.txt", "val-000001.tar", "train-1.tar", "generator.pth", ".auxgen-export.rank-x.json", "x.tmp"]
    assert all(layout.is_ours(n) for n in ours) and not any(layout.is_ours(n) for n in theirs)
    assert layout.is_shard("test-000003.tar", "test") and not layout.is_shard("test-000003.tar", "train")
    assert [p.name for p in layout.hdf5_paths(Path("l.h5"))][:2] == ["l.h5", "l.h5.manifest.json"]


def test_export_modules_import_no_cycle():
    """The multi-process code (ranks.py) builds on the shared stages, never on the exporter that uses it."""
    import ast

    root = Path(__file__).resolve().parents[1] / "auxgen" / "export"
    deps = {}
    for f in root.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("auxgen.export."):
                found.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "auxgen.export":  # a module or a name
                found |= {a.name for a in node.names if (root / f"{a.name}.py").is_file()}
            elif isinstance(node, ast.Import):
                found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("auxgen.export.")}
        deps[f.stem] = found

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(d == b or (d not in seen and reaches(d, b, seen | {d})) for d in deps.get(a, ()))

    assert "exporter" not in deps["ranks"]
    assert not [m for m in deps if m != "__init__" and reaches(m, m, {m})]


def test_shard_bytes_are_tarfiles_own(tmp_path):
    """The sink joins tar members itself; the bytes must be what TarFile.addfile and close write."""
    from auxgen.export.wds import MEMBER_MODE, MEMBER_MTIME, MEMBER_OWNER, TAR_ENCODING, TAR_FORMAT, sample_tar, tar_end

    rng = np.random.default_rng(0)
    samples = [(f"{'k' * n}{i:06d}", {"cls": b"3", "aux.npy": rng.bytes(int(rng.integers(1, 900))),
                                       "json": b"{}"}) for i, n in enumerate((1, 120, 5))]  # 120: a GNU long name
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w|", format=TAR_FORMAT, encoding=TAR_ENCODING) as tar:
        for key, files in samples:
            for ext in sorted(files):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(files[ext]), MEMBER_MTIME, MEMBER_MODE
                info.uname = info.gname = MEMBER_OWNER
                tar.addfile(info, io.BytesIO(files[ext]))
    ours = b"".join(sample_tar(k, f) for k, f in samples)
    ours += tar_end(len(ours))
    assert ours == ref.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours)) as tar:  # and it reads back
        assert [m.name for m in tar.getmembers()][:3] == ["k000000.aux.npy", "k000000.cls", "k000000.json"]


@pytest.mark.parametrize("name", ["", "000001.cls", "k" * 98 + ".x", "k" * 99, "k" * 100, "k" * 140,
                                  "héllo.aux.npy", "x\udcff.cls"])
def test_member_headers_are_tarinfos(name):
    """The template-filled header is TarInfo.tobuf's, for every name length, encoding and size edge."""
    from auxgen.export.wds import _tarinfo_header, member_header

    for size in (0, 1, 511, 512, 10**6, 8**11 - 1, 8**11):
        assert member_header(name, size) == _tarinfo_header(name, size), (name, size)
