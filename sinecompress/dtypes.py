"""The one table of tensor dtypes: safetensors names, torch dtypes and byte sizes.

Every dtype safetensors knows is here, so any tensor can be copied byte for byte; ``FLOAT`` are the
ones a layer can be factorised in.
"""

from __future__ import annotations

import torch

# safetensors name -> (torch dtype, bytes per element)
TABLE: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
    "U16": (torch.uint16, 2), "U32": (torch.uint32, 4), "U64": (torch.uint64, 8),
}
FLOAT = ("F64", "F32", "F16", "BF16")  # dtypes a weight can be factorised (and fitted) in
SIZES = {k: size for k, (_, size) in TABLE.items()}
TO_TORCH = {k: dt for k, (dt, _) in TABLE.items()}
FROM_TORCH = {dt: k for k, dt in TO_TORCH.items()}


def st_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype."""
    try:
        return FROM_TORCH[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no safetensors name") from None


def float_dtype(name: str) -> torch.dtype:
    """The torch dtype of a floating safetensors name; ValueError for any other."""
    if name not in FLOAT:
        raise ValueError(f"{name!r} is not a floating-point dtype ({', '.join(FLOAT)})")
    return TO_TORCH[name]
