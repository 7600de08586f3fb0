"""``--workers N``: the ``torchrun`` path started from inside one command, on one machine.

The parent starts N spawned processes with the same environment torchrun would give them
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; gloo backend) and each runs the job it was given
(``factorize``); the parent only waits, relays rank 0's summary, and re-raises the first known
error as one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
import warnings

import torch
import torch.distributed

from ..errors import SineCompressError, WorkerError
from ..signals import Interrupted, install


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive the command that started it (it would write the output after the
    parent is gone, kill -9 included): ask the kernel for SIGTERM when the parent dies (Linux), and
    watch for a changed parent everywhere. ``parent`` is the launcher's pid as it gave it: a parent that
    died while this worker was still importing is already gone by now, and must not be mistaken for init."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # gone before the kernel was asked; nothing has been done yet to clean up
        os._exit(128 + signal.SIGTERM)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)  # unwinds through the cleanups like any interruption

    threading.Thread(target=watch, daemon=True).start()


def _worker(job, rank: int, world: int, port: int, threads: int, source, out, config, results,
            parent: int) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "SINECOMPRESS_BACKEND": "gloo", HELD: "1"})
    torch.set_num_threads(threads)
    install()
    _die_with_parent(parent)
    warnings.showwarning = lambda m, *a, **k: print(f"warning: {m}", file=sys.stderr, flush=True)
    try:
        summary = job(source, out, config)
        results.put((rank, "ok", summary))
    except SineCompressError as e:
        results.put((rank, "error", (e.exit_code, str(e))))
    except Interrupted:
        results.put((rank, "error", (130, "interrupted")))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


PR_SET_PDEATHSIG = 1  # prctl(2)
HELD = "SINECOMPRESS_OUTPUT_HELD"  # set for workers: their parent holds the output's lock


def in_worker() -> bool:
    """True inside a process group (a worker of ``--workers``, or ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def held_by_parent() -> bool:
    return os.environ.get(HELD) == "1"


def run_workers(job, source, out, config, threads: int | None = None) -> dict:
    """Run ``job(source, out, config)`` in ``config.workers`` local processes; return rank 0's summary."""
    workers = config.workers
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(job, r, workers, port, threads, str(source), str(out), config,
                                               results, os.getpid()))
             for r in range(workers)]
    for p in procs:
        p.start()
    got: dict[int, tuple] = {}
    try:
        while len(got) < workers:
            try:
                rank, status, payload = results.get(timeout=0.5)
                got[rank] = (status, payload)
                continue
            except queue.Empty:
                pass
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in got]
            if dead:
                raise WorkerError(f"worker {dead[0]} died (exit code {procs[dead[0]].exitcode}) "
                                  "before finishing; rerun with --resume to continue")
    finally:
        for p in procs:
            if p.is_alive() and len(got) < workers:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join()
    errors = [payload for status, payload in got.values() if status == "error"]
    if errors:
        raise WorkerError(errors[0][1], errors[0][0])
    return got[0][1]
