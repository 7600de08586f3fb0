"""Several processes share one factorize run (``torchrun`` or ``--workers N``).

Layers are split across ranks by size; each rank fits its share into the run's work directory,
then each writes its share of the output shards and rank 0 writes the index and renames the
result into place. Every rank reads the same plan from the same flags, so no plan travels over
the wire; only errors and the temporary output name are exchanged. Single-process runs use
``Dist()`` (rank 0 of 1), where every collective is a no-op.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from ..errors import GateFailed, InputError, SineCompressError, UsageError
from .plan import LayerPlan

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def multi(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.multi:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """``obj`` as rank 0 has it."""
        if not self.multi:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on every rank; if it raised a known error on any rank, raise it on all of them.

        Without this, one rank's one-line error (say, an unreadable tensor) would leave the others
        waiting forever at the next barrier.
        """
        if not self.multi:
            return fn()
        err, result = None, None
        try:
            result = fn()
        except SineCompressError as e:
            err = (type(e).__name__, e.exit_code, str(e))
        errs = [None] * self.world
        torch.distributed.all_gather_object(errs, err)
        first = next((e for e in errs if e), None)
        if first:
            raise _rebuild(first)
        return result

    def on_rank0(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; share its result, or its error, with every rank."""
        def call():
            return fn() if self.rank == 0 else None
        result = self.all_ok(call)
        return self.broadcast(result)


def _rebuild(err) -> SineCompressError:
    """The same kind of error on every rank, so each exits with the same code and message."""
    name, code, msg = err
    cls = {"UsageError": UsageError, "InputError": InputError, "GateFailed": GateFailed}.get(name, SineCompressError)
    e = cls(msg)
    e.exit_code = code
    return e


def from_env() -> Dist:
    """The process group ``torchrun`` described in the environment (gloo on CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("SINECOMPRESS_BACKEND", "") != "gloo"
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group("nccl" if use_nccl else "gloo")
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"cannot join the process group described by RANK/WORLD_SIZE/MASTER_ADDR ({e})") from None
        # A group left to the interpreter's teardown can abort a rank ("terminate called without an active
        # exception", exit -6) after its work is done: the suite's two-rank gloo run did once.
        atexit.register(_leave, dist)
    return Dist(dist.get_rank(), dist.get_world_size())


def _leave(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share(layers: list[tuple[int, LayerPlan]], world: int) -> list[list[tuple[int, LayerPlan]]]:
    """Split layers across ``world`` ranks, biggest first onto the least-loaded rank (deterministic)."""
    loads = [0] * world
    out: list[list[tuple[int, LayerPlan]]] = [[] for _ in range(world)]
    for i, lp in sorted(layers, key=lambda x: (-x[1].dense_params, x[0])):
        r = min(range(world), key=lambda j: (loads[j], j))
        out[r].append((i, lp))
        loads[r] += lp.dense_params
    return [sorted(s, key=lambda x: x[0]) for s in out]
