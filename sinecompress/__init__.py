"""sinecompress: sine-activated low-rank compression and adapters (Ji et al., ICLR 2025)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import GateFailed, InputError, SineCompressError, UsageError  # noqa: E402
from .layers import LowRankLinear, SineLowRankLinear, sine_weight  # noqa: E402

# Functions share their modules' names; importing them here makes `sinecompress.load` the function.
from .compress import compress_  # noqa: E402
from .factorize import factorize  # noqa: E402
from .inflate import inflate  # noqa: E402
from .load import load  # noqa: E402

__all__ = [
    "__version__", "SineLowRankLinear", "LowRankLinear", "sine_weight",
    "SineCompressError", "UsageError", "InputError", "GateFailed",
    "factorize", "inflate", "load", "compress_",
]
