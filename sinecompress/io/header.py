"""Safetensors headers are checked before they are trusted: nothing a lying header says is read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..dtypes import SIZES
from ..errors import InputError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def check_safetensors_header(path: Path) -> dict:
    """Validate a safetensors header before any tensor is touched; return it.

    Guards against lying headers: a header length past the file, non-object entries, bad dtypes,
    negative or non-integer dims, offsets past the end, byte counts that disagree with
    shape × dtype, overlapping ranges, holes and trailing bytes (the format packs tensors back to
    back), and non-string metadata. Anything that passes can be read by ``safe_open``.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise InputError(f"{path}: corrupt safetensors header (length {n} exceeds the file or the 100 MB limit)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a valid safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise InputError(f"{path}: corrupt safetensors header ('__metadata__' must map strings to strings)")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            if not isinstance(info, dict):
                raise TypeError
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(shape, list):
                raise TypeError
            count = 1
            for d in shape:
                if type(d) is not int or d < 0:
                    raise ValueError
                count *= d
            ints = type(start) is int and type(end) is int
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if not isinstance(dtype, str) or dtype not in SIZES:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not ints or not 0 <= start <= end:
            raise InputError(f"{path}: tensor {name!r} has invalid data offsets {info['data_offsets']!r}")
        if end > data_len:
            raise InputError(f"{path}: tensor {name!r} has data offsets past the end of the file (truncated?)")
        if end - start != count * SIZES[dtype]:
            raise InputError(f"{path}: tensor {name!r} byte range does not match its shape {shape} and dtype {dtype}")
        spans.append((start, end, name))
    spans.sort()
    pos, prev = 0, None
    for s0, e0, n0 in spans:
        if s0 < pos:
            raise InputError(f"{path}: tensors {prev!r} and {n0!r} have overlapping data ranges")
        if s0 > pos:
            raise InputError(f"{path}: {s0 - pos} unused bytes before tensor {n0!r} (corrupt or lying header)")
        pos, prev = e0, n0
    if pos != data_len:
        raise InputError(f"{path}: {data_len - pos} bytes after the last tensor (corrupt or lying header)")
    return header
