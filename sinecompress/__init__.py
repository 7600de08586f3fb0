"""sinecompress: sine-activated low-rank compression and adapters (Ji et al., ICLR 2025)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import GateFailed, InputError, SineCompressError, UsageError  # noqa: E402
from .layers import LowRankLinear, SineLowRankLinear, sine_weight  # noqa: E402


def __getattr__(name):
    # The pipeline pulls in more of torch/transformers; import it on first use, not at `import sinecompress`.
    lazy = {"factorize": "factorize", "inflate": "inflate", "load": "load", "compress_": "compress"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(name)

__all__ = [
    "__version__", "SineLowRankLinear", "LowRankLinear", "sine_weight",
    "SineCompressError", "UsageError", "InputError", "GateFailed",
    "factorize", "inflate", "load", "compress_",
]
