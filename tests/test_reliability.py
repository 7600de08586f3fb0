"""Crash safety, resume, sharded output and streaming: what a killed or interrupted run leaves behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sinecompress import LowRankLinear, factorize, inflate, load
from sinecompress.config import parse_size
from sinecompress.errors import SineCompressWarning, UsageError
from sinecompress.io.atomic import lock_path
from sinecompress.io.format import META_KEY, read_layers
from sinecompress.io.open import open_source
from sinecompress.io.shards import split_shards
from sinecompress.io.sources import INDEX_NAME
from sinecompress.io.writer import Entry
from sinecompress.pipeline import fitting
from sinecompress.pipeline.workdir import work_path

from .helpers import WIDE, assert_one_line_error, cli, leftovers, subprocess_env, tiny_state, wide_file


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
    # Hugging Face's split (and names): the 120-byte tensor alone, the small ones packed up to the limit
    assert sorted(groups) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted([e.name for e in g] for g in groups.values()) == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    assert list(split_shards(es, None)) == ["model.safetensors"]  # no limit: one file


def test_sharded_output_reads_back(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    s = factorize(m, tmp_path / "sharded", method="svd", rank=4, max_shard_size="6KB")
    out = tmp_path / "sharded"
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(p.name for p in out.iterdir()) == sorted([*shards, INDEX_NAME, "README.md"])  # + model card
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
    assert set(read_layers(open_source(out))) == {x["name"] for x in s["layers"]}
    inflate(out, tmp_path / "dense")  # sharded like its input
    inflate(single, tmp_path / "dense.safetensors")
    d1, d2 = open_source(tmp_path / "dense"), load_file(str(tmp_path / "dense.safetensors"))
    assert sorted(d1.tensors) == sorted(d2) and all(torch.equal(d1.get(k), d2[k]) for k in d2)
    mods = load(out)
    assert isinstance(mods["blocks.0.fc1"], LowRankLinear)


# ---------------------------------------------------------------------------- work dir and resume


def _interrupt_after(n):
    def progress(name, done, total):
        if name and done == n:
            raise KeyboardInterrupt
    return progress


def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch):
    m = wide_file(tmp_path / "m.safetensors")
    kw = dict(method="sine", rank=6, omega=100.0, fit_steps=8)
    factorize(m, tmp_path / "fresh.safetensors", **kw)
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, progress=_interrupt_after(2), **kw)
    assert not out.exists() and leftovers(tmp_path) == []
    work = work_path(out)
    assert len(list(work.glob("layer-*.safetensors"))) == 2
    calls = []
    real = fitting.fit_layer  # counts the layers really fitted; the fit itself runs
    monkeypatch.setattr(fitting, "fit_layer", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    factorize(m, out, resume=True, **kw)
    assert len(calls) == 4  # 6 layers, 2 reused
    assert out.read_bytes() == (tmp_path / "fresh.safetensors").read_bytes()
    assert not work.exists()


def test_resume_refuses_a_different_plan(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(1))
    with pytest.raises(UsageError, match=r"--resume: .* different run \(plan: .*rank"):
        factorize(m, out, method="svd", rank=5, resume=True)
    # A changed source is refused too.
    time.sleep(0.01)
    wide_file(m, seed=1)
    with pytest.raises(UsageError, match="source files"):
        factorize(m, out, method="svd", rank=4, resume=True)


def test_without_resume_a_stale_work_dir_is_discarded_with_a_warning(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(3))
    with pytest.warns(SineCompressWarning, match="discarding 3 fitted layers"):
        factorize(m, out, method="svd", rank=4)
    assert out.exists() and not work_path(out).exists()


def test_damaged_layer_file_is_refitted(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    factorize(m, tmp_path / "fresh.safetensors", method="svd", rank=4)
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(3))
    victim = sorted(work_path(out).glob("layer-*.safetensors"))[1]
    victim.write_bytes(victim.read_bytes()[:-7])  # as if cut short by a full disk
    factorize(m, out, method="svd", rank=4, resume=True)
    assert out.read_bytes() == (tmp_path / "fresh.safetensors").read_bytes()


def test_existing_output_needs_overwrite(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    code, _, err = cli("factorize", m, "--method", "svd", "--rank", "4", "--out", out)
    assert code == 0, err
    first = out.read_bytes()
    code, _, err = cli("factorize", m, "--method", "svd", "--rank", "5", "--out", out)
    assert_one_line_error(code, err, 2, "already exists; pass --overwrite")
    assert out.read_bytes() == first
    code, _, err = cli("factorize", m, "--method", "svd", "--rank", "5", "--out", out, "--overwrite")
    assert code == 0, err
    assert out.read_bytes() != first and open_source(out).tensors and leftovers(tmp_path) == []
    # a file this tool cannot have written is never replaced, even with --overwrite
    precious = tmp_path / "precious.safetensors"
    precious.write_bytes(b"precious")
    code, _, err = cli("factorize", m, "--method", "svd", "--rank", "4", "--out", precious, "--overwrite")
    assert_one_line_error(code, err, 2, "refusing to replace it even with --overwrite")
    assert precious.read_bytes() == b"precious"


# ---------------------------------------------------------------------------- signals, real subprocess


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """~256 MB of untouched tensors, so that the output write takes long enough to be caught mid-way."""
    d = tmp_path_factory.mktemp("big")
    sd = tiny_state(**WIDE)
    for i in range(64):
        sd[f"store.{i}"] = torch.full((1024, 1024), float(i))
    path = d / "big.safetensors"
    save_file(sd, str(path))
    return path


def _start(src, out, *extra):
    env = subprocess_env()
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
    assert_one_line_error(proc.returncode, err, code, f"interrupted ({sig.name}); temporary output removed")
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


def test_a_live_run_owns_its_output(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyboardInterrupt):
        factorize(m, out, method="svd", rank=4, progress=_interrupt_after(1))
    # another process holds the output's OS lock, as a run in progress does
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1], "
                               "timeout=0); lock.acquire(); print('held', flush=True); time.sleep(60)",
                               str(lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="another sinecompress run is writing this output"):
            factorize(m, out, method="svd", rank=4, resume=True)
        assert not out.exists() and work_path(out).exists()  # the refused run touched nothing
    finally:
        holder.kill()
        holder.wait()
    factorize(m, out, method="svd", rank=4, resume=True)  # the holder is gone, and so is its lock: the run continues
    assert out.exists() and not work_path(out).exists()
