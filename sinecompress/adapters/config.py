"""Adapter settings and parameter counts.

Per-module overrides use the project's one matching rule (``sinecompress.matching``): each key of
``rank_pattern`` / ``alpha_pattern`` / ``omega_pattern`` is a regular expression matched in full
against the module name; the first key that matches wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..matching import Pattern, compile_patterns

KINDS = ("lora", "dora", "sine_lora", "sine_dora")

# The paper's frequencies for sine LoRA on Llama-3-8B (Table 5), by rank; other ranks use DEFAULT_OMEGA.
PAPER_OMEGA_LLAMA = {4: 800.0, 8: 600.0, 16: 200.0, 32: 200.0}
DEFAULT_OMEGA = 200.0


@dataclass
class AdapterConfig:
    """What to inject. ``alpha=None`` means α = 2r (the DoRA/Llama setting the paper follows)."""

    kind: str = "sine_lora"
    r: int = 8
    alpha: float | None = None
    omega: float = DEFAULT_OMEGA
    dropout: float = 0.0
    lean: bool = True  # memory-lean autograd for the sine and DoRA kinds; False = autograd through dense ΔW
    fuse: bool | None = None  # one matmul with W0 + ΔW; None: only in float32/float64 (see functional.py)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    omega_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"adapter kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if int(self.r) <= 0:
            raise UsageError(f"adapter rank r must be a positive integer, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"adapter dropout must be in [0, 1), got {self.dropout}")
        for what, pats in (("rank_pattern", self.rank_pattern), ("alpha_pattern", self.alpha_pattern),
                           ("omega_pattern", self.omega_pattern)):
            compile_patterns(pats, what)

    @property
    def sine(self) -> bool:
        return self.kind.startswith("sine")

    @property
    def dora(self) -> bool:
        return self.kind.endswith("dora")

    def for_module(self, name: str) -> tuple[int, float, float]:
        """(r, α, ω) for one module, after per-module overrides."""
        r = int(_first(self.rank_pattern, name, self.r))
        alpha = _first(self.alpha_pattern, name, None)
        if alpha is None:
            alpha = self.alpha if self.alpha is not None else 2.0 * r
        omega = float(_first(self.omega_pattern, name, self.omega))
        return r, float(alpha), omega


def _first(patterns: dict, name: str, default):
    for pat, value in patterns.items():
        if Pattern(pat, "pattern").fullmatch(name):
            return value
    return default


def adapter_parameter_count(shapes: dict[str, tuple[int, int]], config: AdapterConfig) -> int:
    """Trainable parameters for adapters on ``shapes`` ({module: (out, in)}), without building anything.

    r(in + out) per module, plus ``out`` for DoRA's magnitude vector; the sine costs nothing extra.
    """
    total = 0
    for name, (out_f, in_f) in shapes.items():
        r, _, _ = config.for_module(name)
        total += r * (in_f + out_f) + (out_f if config.dora else 0)
    return total
