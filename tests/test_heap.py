"""Trimming the heap between blocks gives freed memory back to the operating system."""

from __future__ import annotations

import os

import pytest

from sinecompress.heap import _malloc_trim, trim_heap


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or _malloc_trim() is None,
                    reason="needs Linux with glibc's malloc_trim")
def test_freed_heap_chunks_go_back_to_the_os():
    # 300 MB in chunks below glibc's mmap threshold, one in fifty kept: the holes stay resident until trimmed
    chunks = [b"\x01" * 100_000 for _ in range(3000)]
    kept = chunks[::50]
    del chunks
    before = _resident_mib()
    trim_heap()
    assert before - _resident_mib() > 100, "trimming gave back less than a third of the freed 290 MB"
    assert len(kept) == 60



@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or _malloc_trim() is None,
                    reason="needs Linux with glibc's mallopt")
def test_a_steady_heap_returns_large_frees_at_once():
    """With the mmap threshold fixed, blocks of a MiB and more are mapped on their own and unmapped when freed:
    no trim is needed for them to leave the resident set (the CLI sets it for its whole run)."""
    import subprocess
    import sys

    code = """
import os
from sinecompress.heap import steady_heap
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
assert steady_heap()
big = bytearray(8 << 20)
del big  # by default glibc now raises its mmap threshold to 8 MiB: the blocks below would go to its heap
chunks = [bytearray(2 << 20) for _ in range(150)]  # 300 MiB in 2 MiB blocks
kept = chunks[::50]
before = rss()
del chunks
print(before - rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # without steady_heap this gives back about 96 MiB (the top of the heap), with it about 294
    assert float(out.stdout) > 250, "freeing 294 MiB of 2 MiB blocks gave back less than 250 MiB"
