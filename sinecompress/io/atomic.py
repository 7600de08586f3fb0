"""Crash-safe output: everything is built under a temporary name next to the target, then renamed.

Before anything is written, the run *claims* its output (``claim_output``): it takes an OS lock on
``.<name>.sc.lock`` next to it, so two runs never write one output, and checks what is there now:
an output may not be, contain or lie inside an input (``paths.check_output_place``), an existing
output must be of the kind the run writes (a file for a file, a directory for a directory), and it is
replaced only with ``--overwrite``. Under the lock every temporary name of that output belongs to a
dead run and is removed. Write failures (no space, read-only, permissions) become ``OutputError``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import filelock

from ..errors import OutputError, UsageError
from .paths import check_output_place, describe, resolved

TMP_MARK = ".sc.tmp-"
LOCK_SUFFIX = ".sc.lock"
_claimed: set[Path] = set()  # outputs this process holds the lock of


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def tmp_name(out: Path) -> Path:
    return out.parent / f".{out.name}{TMP_MARK}{os.getpid()}"


def check_existing(out: Path, overwrite: bool, kind: str = "file",
                   replaceable: Callable[[Path], str | None] | None = None, flag: str = "--out") -> None:
    """What is at ``out`` now may be replaced: nothing, or (with ``overwrite``) a ``kind`` of thing that
    ``replaceable`` accepts (it returns None, or why the thing is not this tool's kind of output).
    ``flag`` names the option that gave the path."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{flag} {out}: is a symbolic link; name the real path")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"{flag} {out}: exists and is {describe(st.st_mode)}; name a new path")
    if not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir != (kind == "dir"):
        raise UsageError(f"{flag} {out}: exists as a {'directory' if is_dir else 'file'}, but this run writes a "
                         f"{'directory' if kind == 'dir' else 'file'}; --overwrite only replaces an output like it")
    why = replaceable(out) if replaceable else None
    if why:
        raise UsageError(f"{flag} {out}: {why}, so it is not an output this tool wrote; refusing to replace it "
                         "even with --overwrite")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive OS lock for writing ``out``; a second run fails at once instead of waiting."""
    path = lock_path(out)
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise UsageError(f"{out}: another sinecompress run is writing this output; wait for it or stop it") from None
    except OSError as e:
        raise OutputError(f"{out}: cannot write in {out.parent} ({e.strerror or e})") from None
    key = resolved(out)
    _claimed.add(key)
    try:
        yield
    finally:
        _claimed.discard(key)
        lock.release()
        with contextlib.suppress(OSError):
            path.unlink()


def held_here(out: Path) -> None:
    """Mark ``out`` as held by this process: the process that launched it holds the lock (``--workers``)."""
    _claimed.add(resolved(out))


@contextlib.contextmanager
def claim_output(out: Path, overwrite: bool, reads: Iterable[Path] = (), kind: str = "file",
                 replaceable: Callable[[Path], str | None] | None = None, flag: str = "--out") -> Iterator[None]:
    """Hold ``out`` for the whole run: its place checked, its lock taken, what is there checked."""
    out = Path(out)
    if resolved(out) in _claimed:
        yield
        return
    check_output_place(out, reads, flag=flag)
    with output_lock(out):
        check_existing(out, overwrite, kind, replaceable, flag)
        clean_stale(out)
        yield


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A small file (a work record) written under a temporary name and renamed into place."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_output(out: Path, overwrite: bool = False, reads: Iterable[Path] = (), kind: str = "file",
                  replaceable: Callable[[Path], str | None] | None = None, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it to ``out`` only if the block succeeds.

    Claims ``out`` first unless this process already holds it (``claim_output``). An OSError while
    writing (disk full, read-only, permissions) becomes a one-line ``OutputError``.
    """
    out = Path(out)
    with claim_output(out, overwrite, reads, kind, replaceable, flag):
        tmp = tmp_name(out)
        _remove(tmp)
        try:
            yield tmp
            _put_in_place(tmp, out, overwrite)
        except BaseException as e:
            _remove(tmp)
            if isinstance(e, OSError) and not isinstance(e, FileExistsError):
                raise OutputError(f"{out}: cannot write the output ({e.strerror or e})") from None
            raise


def _put_in_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if os.path.lexists(out):
        if not overwrite:  # created by something else while this run worked
            raise UsageError(f"{out} appeared while this run was writing it; nothing was replaced")
        old = out.parent / f".{out.name}{TMP_MARK}old-{os.getpid()}"
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)  # stopped between the two renames: put the previous output back
            raise
        _remove(old)
    elif tmp.is_dir():
        os.rename(tmp, out)
    else:
        try:
            os.link(tmp, out)  # fails if `out` appeared meanwhile, where a rename would replace it
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise UsageError(f"{out} appeared while this run was writing it; nothing was replaced") from None
            os.replace(tmp, out)  # a file system without hard links
        else:
            tmp.unlink()


def clean_stale(out: Path) -> list[Path]:
    """Remove temporary outputs of ``out`` left by killed runs. Called under the output's lock, so no
    other live run owns any of them."""
    removed = []
    for p in out.parent.glob(f".{glob.escape(out.name)}{TMP_MARK}*"):
        if p != tmp_name(out):
            _remove(p)
            removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
