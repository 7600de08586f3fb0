"""The process's memory: hand freed heap memory back to the operating system between blocks, read the
resident set (current and peak) for the per-block records, and the GPU's peak on a CUDA run.

glibc keeps freed chunks below its mmap threshold in its arenas; over a block-by-block run the holes
add up (the peak RSS of a 22-block 1.1B-shaped run crept up by about 30 MiB a block, and trimming at a
block boundary gave back 400 MiB). Elsewhere (another C library, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from functools import cache

import torch


@cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """``malloc_trim(0)``: release the free pages of every arena, where the C library has it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def peak_rss_mib() -> int:
    """The process's peak resident set so far, MiB (ru_maxrss is in KiB on Linux, in bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (2**20 if sys.platform == "darwin" else 1024)


def rss_mib() -> int | None:
    """The process's resident set now, MiB; None where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (OSError, ValueError, IndexError):
        return None


def _on_cuda(device: str) -> bool:
    return str(device).startswith("cuda") and torch.cuda.is_available()


def reset_gpu_peak(device: str) -> None:
    """Start ``device``'s peak-memory counters afresh (a run reports its own peak, not an earlier one's)."""
    if _on_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mib(device: str) -> dict | None:
    """Peak GPU memory on ``device`` since ``reset_gpu_peak``, MiB: what tensors held (``allocated``) and what
    torch's caching allocator took from the card (``reserved``, the nearer to what nvidia-smi shows, which
    adds the CUDA context). None off CUDA."""
    if not _on_cuda(device):
        return None
    return {"allocated": torch.cuda.max_memory_allocated(device) // 2**20,
            "reserved": torch.cuda.max_memory_reserved(device) // 2**20}


def gpu_record(device: str) -> dict:
    """``{"peak_gpu_mib": peak_gpu_mib(device)}`` for a summary or a block's record; {} off CUDA."""
    peak = peak_gpu_mib(device)
    return {} if peak is None else {"peak_gpu_mib": peak}
