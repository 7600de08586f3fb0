"""Streaming safetensors writer: the header is computed up front from the known names, dtypes and
shapes, then tensors are produced and written one at a time, so no more than one is ever held."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dtypes import SIZES, st_name


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
        return count * SIZES[self.dtype]


def write_safetensors(path: Path, entries: list[Entry], metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[Entry], None] | None = None) -> int:
    """Write a safetensors file by streaming ``entries`` in order; return the bytes written."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in entries:
        if e.name in header:  # a JSON header would silently keep only the last one
            raise ValueError(f"{path}: tensor name {e.name!r} would be written twice")
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in entries:
            t = e.produce().detach().to("cpu").contiguous()
            if tuple(t.shape) != tuple(e.shape) or st_name(t.dtype) != e.dtype:
                raise RuntimeError(f"{e.name}: produced {st_name(t.dtype)}{list(t.shape)}, "
                                   f"header says {e.dtype}{list(e.shape)}")
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)  # the tensor's own bytes, no copy
            del t
            if on_tensor:
                on_tensor(e)
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(blob) + offset


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """``write_safetensors`` for tensors already in memory (safetensors' own ``save_file`` makes files
    private, mode 0600; these get the usual permissions, like every other output)."""
    entries = [Entry(k, st_name(t.dtype), tuple(t.shape), lambda t=t: t) for k, t in tensors.items()]
    return write_safetensors(path, entries, metadata)
