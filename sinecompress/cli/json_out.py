"""``--json`` output: strict JSON on stdout, whatever floats a result holds."""

from __future__ import annotations

import json
import math


def plain(obj):
    """``obj`` with every non-finite float as None: JSON has no NaN or Infinity, and parsers such as
    JavaScript's ``JSON.parse`` reject the tokens Python's ``json`` writes for them by default."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def print_json(obj, indent: int | None = 2) -> None:
    print(json.dumps(plain(obj), indent=indent, allow_nan=False))
