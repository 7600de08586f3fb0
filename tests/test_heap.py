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

