"""Processes, locks and signals (issue 13: orphans and locks, small ones).

What only a real process shows runs in one (``sc_process`` / Popen): workers that outlive a
SIGKILLed parent, two runs racing for one output, Ctrl-C while the package imports, SIGHUP, a
closed stdout. The rest runs in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sinecompress
from sinecompress.io.atomic import lock_path

from ._safety import FAST, ROOT, compressed, env, leftovers, one_line, readable, refused, sc, snapshot, tiny


def _popen(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sinecompress", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), **kw)


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    kids = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                kids.setdefault(int(fields[1]), []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait(cond, timeout: float, step: float = 0.05) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _slow_source(path: Path, layers: int = 6) -> Path:
    """Layers that take the sine fit a while, so a run can be caught in the middle."""
    g = torch.Generator().manual_seed(0)
    save_file({f"blocks.{i}.fc.weight": torch.randn(192, 96, generator=g) for i in range(layers)}, str(path))
    return path


SLOW_FIT = ("--rank", "8", "--omega", "30", "--fit-steps", "3000", "--no-calib")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["fitting", "starting"])
def test_workers_die_with_their_sigkilled_parent(tmp_path, when):
    """kill -9 of the --workers 2 parent, while its workers fit or while they still import: they exit, and
    nothing is written at the output after the parent is gone."""
    src = _slow_source(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    parent = _popen("factorize", src, "--out", out, *SLOW_FIT, "--workers", "2")
    try:
        if when == "fitting":
            ready = _wait(lambda: (tmp_path / ".o.safetensors.sc.work" / "run.json").exists(), 240)
        else:
            ready = _wait(lambda: len(_children(parent.pid)) >= 2, 240, step=0.01)
        assert ready, parent.communicate(timeout=5)
        workers = _children(parent.pid)
        assert len(workers) >= 2
        parent.kill()
        parent.wait(timeout=30)
        limit = 10 if when == "fitting" else 120  # a worker still importing torch notices once it runs
        assert _wait(lambda: not any(_alive(w) for w in workers), limit, step=0.1), \
            [w for w in workers if _alive(w)]
        time.sleep(1)
        assert not out.exists()
        assert not list(tmp_path.glob(".o.safetensors.sc.tmp-*"))
    finally:
        for w in _children(parent.pid) + [parent.pid]:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # Nothing the dead run left (its lock file, its work dir) blocks the next run.
    code, _, err = sc("factorize", src, "--out", out, *FAST)
    assert code == 0, err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_inflates_to_one_output_exactly_one_wins(tmp_path):
    c = compressed(tmp_path)
    out = tmp_path / "dense.safetensors"
    procs = [_popen("inflate", c, "--out", out) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    one_line(2, loser, 2, str(out))
    readable(out)
    assert leftovers(tmp_path) == []


LOCKER = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1], timeout=0)
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_lock_held_by_a_live_process_blocks(tmp_path):
    c = compressed(tmp_path)
    out = tmp_path / "dense.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        keep = snapshot(tmp_path)
        refused(sc("inflate", c, "--out", out, "--overwrite"), 2, "another sinecompress run", keep=keep)
    finally:
        holder.kill()
        holder.wait()
    code, _, err = sc("inflate", c, "--out", out)  # the holder is gone: its lock went with it
    assert code == 0, err
    assert leftovers(tmp_path) == []


def test_no_stale_pid_or_file_can_block(tmp_path):
    """Whatever a dead run left (a lock file, a temporary output named after a live pid, an old owner.pid
    naming a live unrelated process) never blocks the next run, and is cleaned up."""
    c = compressed(tmp_path)
    out = tmp_path / "dense.safetensors"
    lock_path(out).write_text(str(os.getpid()))
    (tmp_path / f".{out.name}.sc.tmp-1").write_bytes(b"half")  # pid 1 is alive, and not a sinecompress run
    code, _, err = sc("inflate", c, "--out", out)
    assert code == 0, err
    assert not (tmp_path / f".{out.name}.sc.tmp-1").exists() and not lock_path(out).exists()
    src = tiny(tmp_path / "m.safetensors")
    fout = tmp_path / "f.safetensors"

    def stop(layer, done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an interrupted run: one layer fitted, in its work dir
        sinecompress.factorize(src, fout, method="svd", rank=2, progress=stop)
    fwork = tmp_path / f".{fout.name}.sc.work"
    assert fwork.is_dir()
    (fwork / "owner.pid").write_text("1")  # what the old PID-liveness scheme would have obeyed forever
    code, _, err = sc("factorize", src, "--out", fout, *FAST, "--resume")
    assert code == 0, err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path):
    """The console script (sinecompress_entry) during its seconds of importing torch and transformers."""
    code = "import sys, sinecompress_entry; sys.argv = ['sinecompress', '--version']; sinecompress_entry.main()"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(), cwd=ROOT)
    time.sleep(0.5)  # the interpreter is up; torch is still importing
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGHUP, 129)])
def test_sighup_leaves_no_temporary_file(tmp_path, sig, code):
    src = _slow_source(tmp_path / "m.safetensors", layers=3)
    out = tmp_path / "o.safetensors"
    p = _popen("factorize", src, "--out", out, *SLOW_FIT)
    work = tmp_path / ".o.safetensors.sc.work"
    assert _wait(lambda: work.exists() or p.poll() is not None, 240), p.communicate()
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [q for q in tmp_path.iterdir() if ".sc.tmp-" in q.name or ".sc.lock" in q.name]
    assert f"interrupted ({sig.name})" in err


@pytest.mark.slow
def test_closed_stdout_is_141_or_0_never_an_error(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "many.safetensors"
    save_file({f"layers.{i}.fc.weight": torch.randn(4, 4, generator=g) for i in range(400)}, str(src))
    out = tmp_path / "o.safetensors"
    shell = (f"{sys.executable} -m sinecompress factorize {src} --out {out} --method svd --rank 1 --json "
             "| head -c 1 >/dev/null; echo \"exit=${PIPESTATUS[0]}\" >&2")
    p = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=env(), timeout=300)
    status = int(p.stderr.strip().splitlines()[-1].split("=")[1])
    assert status in (0, 141), p.stderr
    assert "error" not in p.stderr.lower() and "Traceback" not in p.stderr
    assert readable(out)
