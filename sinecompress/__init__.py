"""sinecompress: sine-activated low-rank compression and adapters (Ji et al., ICLR 2025).

The package is layered; imports only go downwards (docs/design.md):
errors, version, dtypes, weights, config, matching → fit/, io/ → nn/, calib/ → pipeline/, scratch/,
adapters/ → recipe/, report/ → cli/.
"""

from __future__ import annotations

from .config import FactorizeConfig, Rule, make_config
from .errors import GateFailed, InputError, SineCompressError, UsageError
from .integrations.hf_hook import install as _install_hf_hook
from .nn.layers import LowRankLinear, SineLowRankLinear, cache_weights
from .pipeline.compress import compress_
from .pipeline.factorize import factorize
from .pipeline.inflate import inflate
from .pipeline.load import load
from .pipeline.save import save
from .version import __version__
from .weights import sine_weight

_install_hf_hook()  # transformers' from_pretrained / SentenceTransformer then load compressed directories

__all__ = [
    "__version__", "SineLowRankLinear", "LowRankLinear", "sine_weight",
    "SineCompressError", "UsageError", "InputError", "GateFailed",
    "FactorizeConfig", "Rule", "make_config",
    "factorize", "inflate", "load", "save", "compress_", "cache_weights",
]
