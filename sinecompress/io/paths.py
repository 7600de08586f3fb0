"""What may be read and what may be written: the path rules every reader and writer follows.

* Only regular files are read: a FIFO or a character device would block or never end.
* A link inside a model directory may not lead out of it (a stray link must not copy a secret into an
  output), except that a Hugging Face cache snapshot links into its own repository's ``blobs/``.
* An output may not be, contain or lie inside anything the run reads, nor the working directory or
  one of its parents; an existing output must be a regular file or directory.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError, OutputError, UsageError

KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def describe(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def regular_file(path: Path, what: str = "input") -> Path:
    """``path`` itself when it is a regular file (links followed); InputError naming what it is otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: the {what} is {describe(st.st_mode)}, not a regular file")
    return path


def resolved(path: Path) -> Path:
    """The absolute path with links and ``..`` resolved, whether or not it exists."""
    return Path(os.path.realpath(path))


def within(path: Path, root: Path) -> bool:
    p, r = resolved(path), resolved(root)
    return p == r or r in p.parents


def link_allowed(path: Path, root: Path) -> bool:
    """Whether ``path`` (inside ``root``) may be followed: its target lies inside ``root`` or, for a Hugging
    Face cache snapshot (``models--*/snapshots/<rev>``), inside that repository."""
    if within(path, root):
        return True
    snap = resolved(root)
    repo = snap.parent.parent
    return snap.parent.name == "snapshots" and repo.name.startswith(("models--", "datasets--")) and within(path, repo)


def member(root: Path, name: str, what: str) -> Path:
    """The regular file ``root/name`` of a model directory, refusing links that lead out of it."""
    path = root / name
    if not link_allowed(path, root):
        raise InputError(f"{path}: the {what} links outside {root}; copy the file into the model directory")
    return regular_file(path, what)


def check_output_place(out: Path, reads: Iterable[Path] = (), parent: bool = True, flag: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside a path the run reads, or that is the working
    directory or one of its parents; with ``parent``, the output's parent must be an existing directory.
    ``flag`` names the option that gave the path."""
    target = resolved(out)
    cwd = resolved(Path.cwd())
    if target == cwd or target in cwd.parents:
        raise UsageError(f"{flag} {out}: is the working directory or one of its parents; name a new path")
    for src in reads:
        s = resolved(src)
        if target == s or s in target.parents or target in s.parents:
            how = "is" if target == s else "lies inside" if s in target.parents else "contains"
            raise UsageError(f"{flag} {out}: {how} the input {src}; write the output somewhere else")
    if not parent:
        return
    if not out.parent.exists():
        raise UsageError(f"{out.parent}: output directory does not exist")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: is not a directory, so {flag} {out} cannot be created there")


def make_output_parent(out: Path, reads: Iterable[Path] = ()) -> None:
    """Create the missing directories above ``out`` (a recipe names ``out/model``, and CI starts clean),
    but only once the place is allowed: nothing is created inside an input, or below a file."""
    if out.parent.is_dir():
        return
    check_output_place(out, reads, parent=False)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        kind = UsageError if e.errno in (errno.ENOTDIR, errno.EEXIST) else OutputError
        raise kind(f"{out.parent}: cannot create the output's directory ({e.strerror or e})") from None
