"""Data-parallel runs on CPU with gloo: 2 processes against 1, for training and export."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from auxgen import distributed
from auxgen.errors import AuxgenError

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, store: str) -> distributed.Dist:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    return distributed.Dist(rank, world, rank)


# ------------------------------------------------------------------------------ maxl with reduce
def _no_bn(module: nn.Module) -> nn.Module:
    """Batch norm out: per-process batch statistics are the one thing that differs by design."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _no_bn(child)
    return module


def _maxl_steps(dist: distributed.Dist, fused: bool, order: int) -> dict[str, torch.Tensor]:
    """Three MAXL iterations on a global batch of 8; each process takes its contiguous share."""
    from auxgen.hierarchy import Hierarchy
    from auxgen.maxl import Nets, fused_iteration, maxl_iteration
    from auxgen.models import LabelGenerator, MultiTaskNet
    from auxgen.steps import paper_objective as Objective

    torch.manual_seed(0)
    h = Hierarchy((2, 3, 2))
    f = _no_bn(MultiTaskNet("cnn", 1, 3, h.num_aux, width=4)).double().train()
    g = _no_bn(LabelGenerator("cnn", 1, h, width=4)).double().train()
    opt = torch.optim.SGD(f.parameters(), lr=0.1, momentum=0.9)
    gopt = torch.optim.SGD(g.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    reduce = dist.average_ if dist.enabled else None
    for _ in range(3):
        x = torch.rand(8, 1, 8, 8, generator=gen, dtype=torch.float64) * 255
        y = torch.randint(0, 3, (8,), generator=gen)
        part = dist.part(8)
        # the usage-entropy term is nonlinear in the batch (taken per process), so it is left out here;
        # the sharpness term is a per-sample mean and averages exactly
        step = fused_iteration if fused else maxl_iteration
        step(Nets(f, g, opt, gopt), x[part], y[part], Objective(0.1, 2.0, meta_order=order, entropy_weight=0.0,
                                                              sharpness_weight=0.1), reduce=reduce)
    return {**{f"f.{k}": v for k, v in f.state_dict().items()}, **{f"g.{k}": v for k, v in g.state_dict().items()}}


def _maxl_worker(rank: int, world: int, store: str, out: str) -> None:
    dist = _join(rank, world, store)
    results = {f"{fused}-{order}": _maxl_steps(dist, fused, order) for fused in (False, True) for order in (1, 2)}
    if rank == 0:
        torch.save(results, out)
    torch.distributed.barrier()  # leave together: a rank tearing gloo down while the other still works can abort
    _leave()


def _leave() -> None:
    """End a worker: the process group down, then exit without static destructors. gloo's threads met
    at interpreter shutdown sometimes abort ("terminate called without an active exception", about one
    run in seven here) after the work and its files are complete; that exit code would fail the test."""
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_process_maxl_equals_one_process(tmp_path):
    """Averaged gradients, look-ahead and meta-gradient: 2 processes x 4 rows = 1 process x 8 rows."""
    mp.spawn(_maxl_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "two.pt")), nprocs=2)
    two = torch.load(tmp_path / "two.pt")
    for key, got in two.items():
        fused, order = key.split("-")
        want = _maxl_steps(distributed.SINGLE, fused == "True", int(order))
        for name, w in want.items():
            # float64: only the summation order differs; the generator moved (it is not a trivial pass)
            assert torch.allclose(got[name], w, rtol=1e-9, atol=1e-12), (key, name)


def test_batch_must_divide_and_sync_bn_refused_on_cpu(monkeypatch):
    d = distributed.Dist(0, 3, 0)
    assert d.check_batch(96) == 32 and d.part(96) == slice(0, 32)
    with pytest.raises(AuxgenError, match="must divide by the 3 processes"):
        d.check_batch(100)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AuxgenError, match="needs CUDA"):
        distributed.check_sync_bn(True, "maxl", 2, torch.device("cpu"))
    with pytest.raises(AuxgenError, match="no forward-mode rule"):
        distributed.check_sync_bn(True, "maxl", 2, torch.device("cuda"))
    distributed.check_sync_bn(True, "single", 2, torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_sync_bn(True, "maxl", 2, torch.device("cpu"))  # one process: nothing to synchronise


# ------------------------------------------------------------------------------ the CLI under a launcher
TRAIN = ["train", "--dataset", "digits", "--backbone", "cnn", "--width", "4", "--batch-size", "128", "--lr", "0.05",
         "--gen-lr", "0.05", "--seed", "0", "--device", "cpu", "--momentum", "0", "--weight-decay", "0",
         "--lr-schedule", "step", "--warmup-epochs", "0", "-q"]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    # what torchrun gives each worker (tests start the processes themselves to own their ids)
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def _launch(args: list[str], world: int) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-m", "auxgen", *args], cwd=ROOT, env=_env(r, world, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]


def _finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    return [(p.wait(timeout), p.communicate()[1]) for p in procs]


def test_train_two_ranks_killed_then_resumed_on_one(tmp_path):
    """Rank 0 alone writes the run; one rank killed mid-run; the run resumes on one process."""
    out = tmp_path / "run"
    procs = _launch([*TRAIN, "--epochs", "2", "--out", str(out)], 2)
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 90
    while not last.is_file() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    assert last.is_file(), procs[0].communicate()[1]
    first_epoch = (out / "metrics.jsonl").read_text()
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:  # gloo reports the lost peer to rank 0; if it is still waiting, end it as torchrun would
        procs[0].wait(20)
    except subprocess.TimeoutExpired:
        procs[0].kill()
    for p in procs:
        p.communicate()
    done = subprocess.run([sys.executable, "-m", "auxgen", "train", "--resume", str(out), "-q"], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if json.loads(first_epoch.splitlines()[-1])["epoch"] == 1:  # killed in epoch 2: epoch 1 is kept as it was
        assert (out / "metrics.jsonl").read_text().startswith(first_epoch)
    assert [m["epoch"] for m in lines] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_two_rank_errors_print_once(tmp_path):
    results = _finish(_launch([*TRAIN, "--epochs", "1", "--batch-size", "63", "--out", str(tmp_path / "r")], 2))
    assert [rc for rc, _ in results] == [2, 2]
    assert results[0][1].strip().count("\n") == 0 and "must divide by the 2 processes" in results[0][1]
    assert results[1][1].strip() == ""
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ export
# 100-row batches of 3 views: batches (and so the processes' shares) begin and end inside samples
EXPORTS = {"shards": ("wds", {"split": "test", "max_count": 40, "views": 3, "batch_size": 100}),
           "labels.h5": ("hdf5", {"views": 3, "batch_size": 100})}


def _export_worker(rank: int, world: int, port: int, run: str, base: str, stop_after: int,
                   resume: bool = False) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), SOURCE_DATE_EPOCH="1700000000")
    torch.set_num_threads(1)
    from auxgen.export import export_labels

    if stop_after:  # killed (no clean-up at all) after this process's stop_after-th finished shard
        import auxgen.export.wds as wds

        done = []

        def die(record: dict) -> None:
            done.append(record)
            if len(done) == stop_after:
                os._exit(3)

        wds._shard_written = die
    for name, (fmt, extra) in EXPORTS.items():
        if (stop_after or resume) and fmt != "wds":
            continue
        export_labels(run, Path(base) / name, fmt, device="cpu", resume=resume, **extra)
    _leave()  # no barrier: in the kill tests the other rank is already gone


def _files(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {p.name: p.read_bytes() for p in (path, path.with_name(path.name + ".manifest.json"))}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def one_process_exports(tiny_run, tmp_path_factory):
    from auxgen.export import export_labels

    base = tmp_path_factory.mktemp("one")
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"  # `created`: the one field two exports would not share
    try:
        for name, (fmt, extra) in EXPORTS.items():
            export_labels(tiny_run, base / name, fmt, device="cpu", **extra)
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    return base


def test_two_process_exports_are_byte_identical_and_verify(tiny_run, one_process_exports, tmp_path):
    from auxgen.verify import verify

    mp.spawn(_export_worker, args=(2, _free_port(), str(tiny_run), str(tmp_path), 0), nprocs=2)
    for name in EXPORTS:
        one, two = _files(one_process_exports / name), _files(tmp_path / name)
        assert len(one) > (8 if name == "shards" else 1)
        assert one == two, name  # shards, their boundaries and keys, the HDF5 file and the manifest
        report = verify(tiny_run, tmp_path / name, sample=64)
        assert report.passed, report.to_dict()


def test_interrupted_two_process_export_resumes_on_one(tiny_run, one_process_exports, tmp_path):
    """Both processes die after their second shard; one process resumes, keeps those shards, ends identical."""
    from auxgen.export import export_labels

    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_export_worker, args=(2, _free_port(), str(tiny_run), str(tmp_path), 2), nprocs=2)
    out = tmp_path / "shards"
    assert not (out / "manifest.json").exists() and len(list(out.glob("*.tar"))) >= 2
    fmt, extra = EXPORTS["shards"]
    summary = export_labels(tiny_run, out, fmt, device="cpu", resume=True, **extra)
    assert summary["resumed"]  # finished shards were kept, not recomputed into new files
    assert _files(out) == _files(one_process_exports / "shards")  # the manifest too: `created` is the first run's


def test_interrupted_two_process_export_resumes_on_two(tiny_run, one_process_exports, tmp_path):
    """Killed after each process's first shard, one of them then damaged; two processes resume, keep the other."""
    from auxgen.export.layout import rank_state_name, shard_name

    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_export_worker, args=(2, _free_port(), str(tiny_run), str(tmp_path), 1), nprocs=2)
    out = tmp_path / "shards"
    # the first process to die can take the other down at any point, so only what was recorded counts
    first, second = out / shard_name("test", 0), out / shard_name("test", 1)  # rank 0's and rank 1's
    record = out / rank_state_name(0)
    recorded = record.is_file() and first.name in record.read_text()
    assert (recorded or second.is_file()) and not (out / "manifest.json").exists()
    if second.is_file():
        second.write_bytes(b"damaged")  # written again: its sha256 no longer checks out
        (out / rank_state_name(1)).write_text("{")  # as if killed while writing it: its shards are written again
    inode = first.stat().st_ino if recorded else None
    mp.spawn(_export_worker, args=(2, _free_port(), str(tiny_run), str(tmp_path), 0, True), nprocs=2)
    assert inode is None or first.stat().st_ino == inode  # a recorded shard that checks out is kept
    assert _files(out) == _files(one_process_exports / "shards")
