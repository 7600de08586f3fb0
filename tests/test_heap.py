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


def test_gpu_peak_reads_torchs_counters_on_cuda_and_nothing_elsewhere(monkeypatch):
    """On a CUDA run the summary carries the card's peak (CI has no GPU: torch's counters are stood in for;
    tests/test_blockwise.py runs the real thing where a GPU is there)."""
    import torch

    from sinecompress.heap import gpu_record, peak_gpu_mib, reset_gpu_peak

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(d))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 300 * 2**20 + 5)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 512 * 2**20)
    reset_gpu_peak("cuda:1")
    assert calls == ["cuda:1"]
    assert peak_gpu_mib("cuda:1") == {"allocated": 300, "reserved": 512}
    assert gpu_record("cuda:1") == {"peak_gpu_mib": {"allocated": 300, "reserved": 512}}
    reset_gpu_peak("cpu")
    assert calls == ["cuda:1"] and peak_gpu_mib("cpu") is None and gpu_record("cpu") == {}  # nothing read, GPU or not
