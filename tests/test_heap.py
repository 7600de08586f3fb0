"""Trimming the heap between blocks gives freed memory back to the operating system, and the resident set
read for the per-block records follows what the process holds."""

from __future__ import annotations

import os

import pytest

from sinecompress.heap import _malloc_trim, peak_rss_mib, rss_mib, trim_heap

LINUX = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm (Linux)")


@LINUX
@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_heap_chunks_go_back_to_the_os():
    # 300 MB in chunks below glibc's mmap threshold, one in fifty kept: the holes stay resident until trimmed
    chunks = [b"\x01" * 100_000 for _ in range(3000)]
    kept = chunks[::50]
    del chunks
    before = rss_mib()
    trim_heap()
    assert before - rss_mib() > 100, "trimming gave back less than a third of the freed 290 MB"
    assert len(kept) == 60


@LINUX
def test_resident_set_counts_touched_memory_and_the_peak_keeps_it():
    before = rss_mib()
    block = bytearray(200 * 2**20)  # calloc may map untouched zero pages: write one byte a page
    block[::4096] = b"\x01" * len(block[::4096])
    held = rss_mib()
    assert held - before > 150
    assert before <= held <= peak_rss_mib()
    del block
    assert peak_rss_mib() >= held  # the peak never comes down
