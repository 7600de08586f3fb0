"""sinecompress: sine-activated low-rank compression and adapters (Ji et al., ICLR 2025)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import GateFailed, InputError, SineCompressError, UsageError  # noqa: E402
from .layers import LowRankLinear, SineLowRankLinear, sine_weight  # noqa: E402

__all__ = [
    "__version__", "SineLowRankLinear", "LowRankLinear", "sine_weight",
    "SineCompressError", "UsageError", "InputError", "GateFailed",
]
