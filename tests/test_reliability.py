"""Crash safety, resume, sharded output and streaming: what a killed or interrupted run leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import import_module

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sinecompress.errors import UsageError
from sinecompress import factorize
from sinecompress.io.format import META_KEY
from sinecompress import inflate
from sinecompress.io.format import read_layers
from sinecompress import load
from sinecompress.config import parse_size
from sinecompress.io.shards import split_shards
from sinecompress.io.open import open_source
from sinecompress.io.sources import INDEX_NAME
from sinecompress.errors import SineCompressWarning
from sinecompress.pipeline.workdir import work_path
from sinecompress.io.writer import Entry

from ._reliability_fixtures import ROOT, cli, leftovers, tiny_file, tiny_state


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.is_dir() else {d.name: d.read_bytes()}


# ---------------------------------------------------------------------------- sharded output


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size("1.5kb") == 1500
    assert parse_size(4096) == 4096
    for bad in ("lots", "-1GB", "0", "5XB"):
        with pytest.raises(UsageError, match="--max-shard-size"):
            parse_size(bad)


def test_shard_split_is_greedy_and_keeps_big_tensors_whole():
    es = [Entry(f"t{i}", "F32", (n,), lambda: None) for i, n in enumerate([10, 10, 30, 5, 5])]
    groups = split_shards(es, 80)  # bytes: 40, 40, 120, 20, 20
    assert [[e.name for e in g] for g in groups] == [["t0", "t1"], ["t2"], ["t3", "t4"]]


def test_sharded_output_reads_back(tmp_path):
    m = tiny_file(tmp_path / "m.safetensors")
    s = factorize(m, tmp_path / "sharded", method="svd", rank=4, max_shard_size="6KB")
    out = tmp_path / "sharded"
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(p.name for p in out.iterdir()) == sorted([*shards, INDEX_NAME])
    for name in shards:  # every shard is within the limit (no tensor here is bigger) and carries the record
        with safe_open(str(out / name), "pt") as f:
            assert META_KEY in f.metadata()
        assert sum(t.numel() * t.element_size() for t in load_file(str(out / name)).values()) <= 6_000
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for n in shards for t in load_file(str(out / n)).values())
    # The same weights as the unsharded output, and inflate/load find the compression record.
    single = tmp_path / "single.safetensors"
    factorize(m, single, method="svd", rank=4)
    a = load_file(str(single))
    b = {k: v for n in shards for k, v in load_file(str(out / n)).items()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(compressed_layers(open_source(out))) == {x["name"] for x in s["layers"]}
    inflate(out, tmp_path / "dense")
    inflate(single, tmp_path / "dense.safetensors")
    d1, d2 = load_file(str(tmp_path / "dense" / "model.safetensors")), load_file(str(tmp_path / "dense.safetensors"))
    assert all(torch.equal(d1[k], d2[k]) for k in d2)
    mods = load(out)
    assert type(mods["blocks.0.fc1"]).__name__ == "LowRankLinear"


# ---------------------------------------------------------------------------- work dir and resume


def _interrupt_after(n):
    def progress(name, done, total):
        if name and done == n:
            raise KeyboardInterrupt
    return progress


def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch):
    m = tiny_file(tmp_path / "m.safetensors")
    kw = dict(method="sine", rank=6, steps=8)
    factorize(m, tmp_path / "fresh.safetensors", **kw)
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, progress=_interrupt_after(2), **kw)
    assert not out.exists() and leftovers(tmp_path) == []
    work = work_path(out)
    assert len(list(work.glob("layer-*.safetensors"))) == 2
    calls = []
    fz = import_module("sinecompress.factorize")  # the module (sinecompress.factorize is also the function)
    real = fz.fit_layer
    monkeypatch.setattr(fz, "fit_layer", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    factorize(m, out, resume=True, **kw)
    assert len(calls) == 4  # 6 layers, 2 reused
    assert out.read_bytes() == (tmp_path / "fresh.safetensors").read_bytes()
    assert not work.exists()


def test_resume_refuses_a_different_plan(tmp_path):
    m = tiny_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(1))
    with pytest.raises(UsageError, match=r"--resume: .* different run \(plan: .*rank"):
        factorize(m, out, method="svd", rank=5, resume=True)
    # A changed source is refused too.
    time.sleep(0.01)
    tiny_file(m, seed=1)
    with pytest.raises(UsageError, match="source files"):
        factorize(m, out, method="svd", rank=4, resume=True)


def test_without_resume_a_stale_work_dir_is_discarded_with_a_warning(tmp_path):
    m = tiny_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(3))
    with pytest.warns(SineCompressWarning, match="discarding 3 fitted layers"):
        factorize(m, out, method="svd", rank=4)
    assert out.exists() and not work_path(out).exists()


def test_damaged_layer_file_is_refitted(tmp_path):
    m = tiny_file(tmp_path / "m.safetensors")
    factorize(m, tmp_path / "fresh.safetensors", method="svd", rank=4)
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(3))
    victim = sorted(work_path(out).glob("layer-*.safetensors"))[1]
    victim.write_bytes(victim.read_bytes()[:-7])  # as if cut short by a full disk
    factorize(m, out, method="svd", rank=4, resume=True)
    assert out.read_bytes() == (tmp_path / "fresh.safetensors").read_bytes()


def test_existing_output_needs_overwrite(tmp_path):
    m = tiny_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    code, _, err = cli("factorize", m, "--method", "svd", "--rank", "4", "--out", out)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert out.read_bytes() == b"precious"
    code, _, err = cli("factorize", m, "--method", "svd", "--rank", "4", "--out", out, "--overwrite")
    assert code == 0, err
    assert open_source(out).tensors and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- signals, real subprocess


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """~256 MB of untouched tensors, so that the output write takes long enough to be caught mid-way."""
    d = tmp_path_factory.mktemp("big")
    sd = tiny_state()
    for i in range(64):
        sd[f"store.{i}"] = torch.full((1024, 1024), float(i))
    path = d / "big.safetensors"
    save_file(sd, str(path))
    return path


def _start(src, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sinecompress", "factorize", str(src), "--method", "svd",
                             "--rank", "4", "--target", r"blocks\.0\.fc1", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_tmp(proc, d, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(".sc.tmp-" in p.name for p in d.iterdir()):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_write_cleans_up(tmp_path, big_source, sig, code):
    out = tmp_path / "o.safetensors"
    proc = _start(big_source, out)
    assert _wait_for_tmp(proc, tmp_path), proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted ({sig.name}); temporary output removed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and leftovers(tmp_path) == []
    # Only the fitted layer stays, for --resume; it completes the run.
    assert [p.name for p in tmp_path.iterdir()] == [work_path(out).name]
    code, _, err = cli("factorize", big_source, "--method", "svd", "--rank", "4", "--target", r"blocks\.0\.fc1",
                       "--out", out, "--resume")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


@pytest.mark.slow
def test_sigkill_leaves_nothing_at_the_output_path(tmp_path, big_source):
    out = tmp_path / "o.safetensors"
    proc = _start(big_source, out)
    assert _wait_for_tmp(proc, tmp_path), proc.communicate()[1]
    proc.kill()
    proc.wait(timeout=30)
    assert not out.exists()
    stale = leftovers(tmp_path)
    assert stale and all(n.startswith(".o.safetensors.sc.tmp-") for n in stale)
    # The next run removes the dead run's temporary output and succeeds.
    code, _, err = cli("factorize", big_source, "--method", "svd", "--rank", "4", "--target", r"blocks\.0\.fc1",
                       "--out", out)
    assert code == 0, err
    assert leftovers(tmp_path) == [] and out.exists()


def test_a_live_run_owns_its_work_dir(tmp_path):
    m = tiny_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(1))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (work_path(out) / "owner.pid").write_text(str(sleeper.pid))  # as if that process were mid-run
        with pytest.raises(UsageError, match=f"another run \\(process {sleeper.pid}\\)"):
            factorize(m, out, method="svd", rank=4, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    factorize(m, out, method="svd", rank=4, resume=True)  # its owner is gone: the run continues
    assert out.exists()
