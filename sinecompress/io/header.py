"""Safetensors headers are checked before they are trusted: nothing a lying header says is read.

The safetensors library validates a header when it opens a file: the header length, the JSON, the
dtypes and shapes, and that the tensors' byte ranges tile the data exactly (no hole, no overlap, no
trailing byte, nothing past the end). We let it, turn its errors into one line naming the file, and
then read the (now trusted) header ourselves, because it lists tensors in the file's own order.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..dtypes import SIZES
from ..errors import InputError


def check_safetensors_header(path: Path) -> dict:
    """Validate a safetensors file's header with the safetensors library; return it (``__metadata__``
    included). InputError, one line naming the file, for anything the library refuses, and for a
    dtype this tool cannot copy."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as e:
        raise InputError(f"{path}: not a valid safetensors file ({_reason(e)})") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] not in SIZES:
            raise InputError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which this tool cannot copy")
    return header


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text.replace("Error while deserializing header: ", "")[:200]
