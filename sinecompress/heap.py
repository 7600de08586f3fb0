"""Hand freed heap memory back to the operating system.

glibc keeps freed chunks below its mmap threshold in its arenas; over a block-by-block run the holes
add up (the peak RSS of a 22-block 1.1B-shaped run crept up by about 30 MiB a block, and trimming at a
block boundary gave back 400 MiB). Elsewhere (another C library, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)

#: Allocations from this size up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 1 << 20


@cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim():
    return getattr(_libc(), "malloc_trim", None)


def trim_heap() -> None:
    """``malloc_trim(0)``: release the free pages of every arena, where the C library has it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def steady_heap() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` (for this process; the CLI calls it).

    By default the threshold rises to the size of each large block freed, up to 32 MiB, so the tensors
    of a block's fit (a few MiB to 32 MiB) end up in the arenas, whose holes make one run's peak RSS differ
    from the next's by up to 180 MiB. Fixed, every tensor of a MiB or more is mapped and unmapped on its own.
    Returns whether the setting took."""
    mallopt = getattr(_libc(), "mallopt", None)
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
