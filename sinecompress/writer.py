"""Crash-safe output: everything is built under a temporary name next to the target, then renamed.

``write_safetensors`` streams tensors one at a time: the header is computed up front from the
known names, dtypes and shapes, so no more than one tensor is ever held for writing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError
from .format import TORCH_TO_ST

ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TMP_MARK = ".sc.tmp-"


@dataclass
class Entry:
    """A tensor to write: its header facts, and a function that produces it when its turn comes."""

    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * ST_SIZES[self.dtype]


def st_dtype(t: torch.Tensor) -> str:
    if t.dtype in TORCH_TO_ST:
        return TORCH_TO_ST[t.dtype]
    return {torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
            torch.uint8: "U8", torch.bool: "BOOL"}[t.dtype]


def write_safetensors(path: Path, entries: list[Entry], metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[Entry], None] | None = None) -> int:
    """Write a safetensors file by streaming ``entries`` in order; return the bytes written."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in entries:
            t = e.produce().detach().to("cpu").contiguous()
            if tuple(t.shape) != tuple(e.shape) or st_dtype(t) != e.dtype:
                raise RuntimeError(f"{e.name}: produced {st_dtype(t)}{list(t.shape)}, "
                                   f"header says {e.dtype}{list(e.shape)}")
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            if on_tensor:
                on_tensor(e)
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(blob) + offset


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise UsageError(f"{out.parent}: output directory does not exist")


def tmp_name(out: Path) -> Path:
    return out.parent / f".{out.name}{TMP_MARK}{os.getpid()}"


@contextlib.contextmanager
def atomic_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it to ``out`` only if the block succeeds."""
    out = Path(out)
    check_output(out, overwrite)
    tmp = tmp_name(out)
    _remove(tmp)
    try:
        yield tmp
        if out.exists():  # only reached with overwrite
            old = out.parent / f".{out.name}{TMP_MARK}old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
