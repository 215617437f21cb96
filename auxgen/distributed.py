"""Data-parallel runs under torchrun: who this process is, and the few collectives auxgen needs.

`torchrun --nproc-per-node N -m auxgen train|export ...` starts N processes with WORLD_SIZE,
RANK and LOCAL_RANK in their environment; `init()` reads them and joins the process group once
(NCCL when the run uses CUDA, gloo on CPUs). Without those variables everything here is a no-op
for a single process, so the single-process code paths do not change.

Gradients are averaged with explicit all-reduces (`Dist.average_`) rather than by wrapping the
model in DistributedDataParallel: MAXL's look-ahead and meta-gradient are computed functionally
(torch.func.functional_call and forward-mode AD), which DDP's backward hooks never see, so one
explicit mechanism serves both networks. auxgen/maxl.py receives it as its `reduce` argument and
makes no rank or device decisions of its own.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from auxgen.errors import AuxgenError

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # a rank that waits longer than this for the others gives up


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and local rank (0, 1, 0 for a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes run directories, checkpoints, manifests and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place (one coalesced all-reduce per dtype)."""
        if not self.enabled or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            tdist.all_reduce(flat)
            flat /= self.world
            o = 0
            for t in group:
                t.copy_(flat[o:o + t.numel()].view_as(t))
                o += t.numel()

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its sum over the ranks, in place."""
        if self.enabled:
            for t in tensors:
                tdist.all_reduce(t)

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (a picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order (picklable objects)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run fn on rank 0 only; an AuxgenError there is raised on every rank, so no rank waits forever.

        Returns fn's result on rank 0 and None elsewhere.
        """
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except AuxgenError as e:
                failure = e
            except BaseException:
                self.broadcast(("rank 0 failed (its message says why)", 1))
                raise
        sent = self.broadcast(None if failure is None else (str(failure), failure.exit_code))
        if failure is not None:
            raise everywhere(failure)
        if sent is not None:
            err = everywhere(AuxgenError(sent[0]))
            err.exit_code = sent[1]
            raise err
        return result

    def main_first(self, fn: Callable[[], T]) -> T:
        """fn on rank 0 first (a download, a cache), then on the others: no two processes write one file."""
        result = self.on_main(fn)
        return result if self.is_main else fn()  # type: ignore[return-value]

    def device(self, device: torch.device) -> torch.device:
        """cuda becomes cuda:LOCAL_RANK (one GPU per process); other devices are unchanged."""
        if device.type != "cuda" or not self.enabled:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise AuxgenError(f"LOCAL_RANK {self.local_rank} but this machine has {torch.cuda.device_count()} "
                              f"CUDA devices; start at most that many processes per node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def check_batch(self, batch_size: int, what: str = "--batch-size") -> int:
        """The per-rank share of a global batch; a batch the world size does not divide is a user error."""
        if batch_size % self.world:
            raise everywhere(AuxgenError(f"{what} {batch_size} is the global batch and must divide by the {self.world} "
                              f"processes; use a multiple of {self.world}"))
        return batch_size // self.world

    def part(self, n: int) -> slice:
        """This rank's contiguous share of n rows (n divisible by the world size)."""
        b = n // self.world
        return slice(self.rank * b, (self.rank + 1) * b)


SINGLE = Dist()


def everywhere(e: AuxgenError) -> AuxgenError:
    """Mark an error every rank raises alike, so the CLI prints it once (on rank 0), not once per process."""
    e.everywhere = True  # type: ignore[attr-defined]
    return e


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise AuxgenError(f"environment variable {name}={value!r} is not an integer") from None


def current() -> Dist:
    """This process's place, from torchrun's environment, without starting anything."""
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return SINGLE
    rank = _env_int("RANK") or 0
    return Dist(rank, world, _env_int("LOCAL_RANK") or 0)


def init(device: torch.device | str = "cpu") -> Dist:
    """Join the process group once (NCCL when `device` is CUDA, gloo otherwise); a no-op without torchrun."""
    d = current()
    if not d.enabled or tdist.is_initialized():
        return d
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(d.local_rank)
    tdist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return d


def shutdown() -> None:
    """Leave the process group (at the end of a command), so torch does not warn about a leaked group."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def check_sync_bn(sync_bn: bool, method: str, meta_order: int, device: torch.device) -> None:
    """Refuse --sync-bn where torch's SyncBatchNorm cannot run MAXL (a one-line AuxgenError)."""
    if not sync_bn or not current().enabled:
        return  # one process: its batch statistics already are the whole batch's
    if device.type != "cuda":
        raise everywhere(AuxgenError("--sync-bn needs CUDA: torch's SyncBatchNorm runs on GPUs only, not on CPU "
                                     "processes (gloo); drop --sync-bn (batch norm is then per process)"))
    if method == "maxl" and meta_order == 2:
        raise everywhere(AuxgenError("--sync-bn cannot run the exact meta-gradient (--meta-order 2): its look-ahead is "
                          "differentiated in forward mode, and SyncBatchNorm has no forward-mode rule; use "
                          "--meta-order 1 or drop --sync-bn"))


def convert_sync_bn(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.nn.Module:
    """The multi-task network with SyncBatchNorm layers when --sync-bn asks for them in a multi-process run.

    The state dict keeps its names (SyncBatchNorm has BatchNorm's parameters and buffers), so
    checkpoints load into either kind of network and resume with any number of processes.
    """
    if not getattr(cfg, "sync_bn", False) or not current().enabled:
        return model
    check_sync_bn(True, cfg.method, cfg.meta_order, device)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def reduce_epoch(dist: Dist, sums: dict[str, torch.Tensor], correct: torch.Tensor, stats: Any,
                 *modules: torch.nn.Module | None) -> None:
    """An epoch's per-process sums made global, and batch-norm running statistics made equal.

    Loss sums are means of per-process means (equal shares); counts and label statistics are
    sums. The running statistics each process gathered on its share are averaged, so every
    process evaluates, and rank 0 checkpoints, the same network.
    """
    dist.average_(list(sums.values()))
    dist.sum_([correct, stats.usage, stats.hard, stats.rows, stats.entropy_sum, stats.frac_sum, stats.frac_rows])
    buffers = [b for m in modules if m is not None for b in m.buffers() if b.is_floating_point()]
    dist.average_(buffers)
