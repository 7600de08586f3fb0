"""The plan: which layers to compress, and how. A plain data object, printed and stored in outputs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import UsageError
from .matching import select_targets
from .sources import Source, tied_heads

METHODS = ("sine", "svd")


@dataclass
class LayerPlan:
    name: str  # module name (tensor name minus ".weight")
    shape: tuple[int, int]  # (out, in)
    dtype: str
    method: str
    rank: int  # total factor rank (sine part + linear part)
    omega: float | None
    linear_rank: int = 0  # part of `rank` given to the linear (SVD) term of a sine layer
    keep_dense: str | None = None  # reason the layer stays dense

    @property
    def dense_params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def factored_params(self) -> int:
        if self.keep_dense:
            return self.dense_params
        m, n = self.shape
        amp = m if self.method == "sine" else 0
        return self.rank * (m + n) + amp


@dataclass
class Plan:
    source: str
    method: str
    rank: int | None
    param_ratio: float | None
    omega: float | None
    targets: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    steps: int = 300
    layers: list[LayerPlan] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for layer in d["layers"]:
            layer["shape"] = list(layer["shape"])
        return d

    @property
    def active(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if not lp.keep_dense]


def rank_for_ratio(m: int, n: int, ratio: float, method: str) -> int:
    """Largest total rank whose factor parameters (amplitude included) stay within ratio·m·n."""
    amp = m if method == "sine" else 0
    return max(0, math.floor((ratio * m * n - amp) / (m + n)))


def split_rank(rank: int) -> int:
    """Linear part of a sine layer's rank: half, as the hybrid fit in DESIGN.md (a lead, tuned in fit)."""
    return rank // 2 if rank >= 2 else 0


def build_plan(src: Source, *, method: str = "sine", rank: int | None = None, param_ratio: float | None = None,
               omega: float | None = 100.0, targets=(), exclude=(), seed: int = 0, steps: int = 300) -> Plan:
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if (rank is None) == (param_ratio is None):
        raise UsageError("give exactly one of --rank K or --param-ratio R")
    if rank is not None and rank <= 0:
        raise UsageError(f"--rank must be a positive integer, got {rank}")
    if param_ratio is not None and not (0 < param_ratio < 1):
        raise UsageError(f"--param-ratio must be between 0 and 1 (exclusive), got {param_ratio}")
    if method == "sine" and (omega is None or not math.isfinite(omega) or omega <= 0):
        raise UsageError(f"--omega must be a positive finite number, got {omega}")
    names = select_targets(src.shapes, src.dtypes, targets, exclude, tied=tied_heads(src), source=src.display)
    if not names:
        raise UsageError(f"no layer to compress in {src.display}; pass --target REGEX")
    plan = Plan(src.display, method, rank, param_ratio, omega if method == "sine" else None,
                list(targets), list(exclude), seed, steps)
    for name in names:
        info = src.tensors[name + ".weight"]
        m, n = info.shape
        k = rank if rank is not None else rank_for_ratio(m, n, param_ratio, method)
        lp = LayerPlan(name, (m, n), info.dtype, method, k, plan.omega,
                       linear_rank=split_rank(k) if method == "sine" else 0)
        if k <= 0:
            lp.keep_dense = f"--param-ratio {param_ratio} leaves no rank for a {m}x{n} layer"
        elif lp.factored_params >= lp.dense_params:
            lp.keep_dense = f"rank {k} is at or above break-even ({m * n // (m + n)}) for {m}x{n}: nothing saved"
        plan.layers.append(lp)
    return plan
