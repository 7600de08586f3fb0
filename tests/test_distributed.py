"""Several processes (torch.distributed, gloo on the CPU) give the single-process output byte for byte."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sinecompress import factorize
from sinecompress.pipeline.distributed import share
from sinecompress.pipeline.plan import LayerPlan

from .helpers import cli, leftovers, subprocess_env, wide_file


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _single(src, out, **kw):
    # BLAS reductions depend on the thread count; torchrun and --workers give each rank 1 thread here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        factorize(src, out, **kw)
    finally:
        torch.set_num_threads(threads)


def test_share_balances_by_size_and_is_deterministic():
    sizes = [(8, 8), (64, 64), (16, 16), (64, 64), (32, 32)]
    layers = [(i, LayerPlan(f"l{i}", s, "F32", "svd", 2, None)) for i, s in enumerate(sizes)]
    parts = share(layers, 2)
    assert sorted(i for p in parts for i, _ in p) == [0, 1, 2, 3, 4]
    # Biggest first onto the lighter rank: 4096 | 4096, then 1024 → r0, 256 → r1, 64 → r1.
    assert [[i for i, _ in p] for p in parts] == [[1, 4], [0, 2, 3]]
    assert share(layers, 2) == parts and share(layers, 1) == [layers]


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_match_single_process(tmp_path):
    src = wide_file(tmp_path / "m.safetensors")
    kw = ["--method", "sine", "--rank", "6", "--omega", "100", "--fit-steps", "5", "--max-shard-size", "8KB"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    # both outputs get the same name (the model card names its directory), in different places
    (tmp_path / "dist").mkdir()
    (tmp_path / "single").mkdir()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "sinecompress", "factorize", str(src), *kw, "--out", str(tmp_path / "dist" / "out")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _single(src, tmp_path / "single" / "out", method="sine", rank=6, omega=100.0, fit_steps=5, max_shard_size="8KB")
    dist, single = _files(tmp_path / "dist" / "out"), _files(tmp_path / "single" / "out")
    assert len([n for n in single if n.endswith(".safetensors")]) >= 2  # several shards: both ranks wrote shards
    assert dist == single
    for d in ("dist", "single"):
        assert leftovers(tmp_path / d) == [] and [p.name for p in (tmp_path / d).iterdir()] == ["out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "m.safetensors", "single"]


@pytest.mark.slow
def test_workers_flag_matches_single_process(tmp_path):
    src = wide_file(tmp_path / "m.safetensors")
    code, _, err = cli("factorize", src, "--method", "svd", "--rank", "4", "--workers", "2",
                       "--out", tmp_path / "w.safetensors")
    assert code == 0, err
    _single(src, tmp_path / "s.safetensors", method="svd", rank=4)  # the same defaults as the CLI's
    assert (tmp_path / "w.safetensors").read_bytes() == (tmp_path / "s.safetensors").read_bytes()
