"""Crash-safe output: everything is built under a temporary name next to the target, then renamed."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError

TMP_MARK = ".sc.tmp-"


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise UsageError(f"{out.parent}: output directory does not exist")


def tmp_name(out: Path) -> Path:
    return out.parent / f".{out.name}{TMP_MARK}{os.getpid()}"


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
def atomic_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it to ``out`` only if the block succeeds."""
    out = Path(out)
    check_output(out, overwrite)
    clean_stale(out)
    tmp = tmp_name(out)
    _remove(tmp)
    try:
        yield tmp
        if out.exists():  # only reached with overwrite
            old = out.parent / f".{out.name}{TMP_MARK}old-{os.getpid()}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # stopped between the two renames: put the previous output back
                raise
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def clean_stale(out: Path) -> list[Path]:
    """Remove temporary outputs for ``out`` left by killed runs (their process no longer exists)."""
    removed = []
    for p in out.parent.glob(f".{glob.escape(out.name)}{TMP_MARK}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(p)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
