"""The plan: which layers to compress, and how. A plain data object, printed and stored in outputs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import UsageError
from .matching import compile_patterns, select_targets
from .sources import Source, tied_heads

METHODS = ("sine", "svd", "wsvd")  # wsvd: whitened SVD (SVD-LLM), needs calibration data
ALLOCATIONS = ("uniform", "sensitivity")  # how a --param-ratio budget is spread (allocate.py)
# Linear share of a sine layer's rank. Half, for both fit paths: with calibration, 50 % measured better
# than 75 % once the sine part could move (docs/fitting.md).
LINEAR_FRACTION = 0.5


@dataclass
class Rule:
    """Per-layer settings for the modules ``match`` full-matches; a None field falls back to the default.

    A rule's ``rank`` or ``param_ratio`` replaces the default size (whichever of the two it has).
    """

    match: str
    method: str | None = None
    rank: int | None = None
    param_ratio: float | None = None
    omega: float | None = None


@dataclass
class LayerPlan:
    name: str  # module name (tensor name minus ".weight")
    shape: tuple[int, int]  # (out, in)
    dtype: str
    method: str
    rank: int  # total factor rank (sine part + linear part)
    omega: float | None  # None for linear methods, and for sine layers until --omega auto has chosen
    linear_rank: int = 0  # part of `rank` given to the linear (SVD) term of a sine layer
    keep_dense: str | None = None  # reason the layer stays dense
    rule: int | None = None  # index of the first Rule that matched this layer (recipes' `targets`)

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
    omega: float | str | None  # a number, "auto" (chosen per layer), or None for linear methods
    targets: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    steps: int = 300
    layers: list[LayerPlan] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    allocate: str = "uniform"  # "sensitivity": ranks re-spread after calibration (allocate.py)

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


def split_rank(rank: int, fraction: float = LINEAR_FRACTION) -> int:
    """Linear part of a sine layer's rank; the sine part keeps at least one rank."""
    return min(int(round(rank * fraction)), rank - 1) if rank >= 2 else 0


def build_plan(src: Source, *, method: str = "sine", rank: int | None = None, param_ratio: float | None = None,
               omega: float | None = 100.0, targets=(), exclude=(), seed: int = 0, steps: int = 300,
               rules=(), allocate: str = "uniform") -> Plan:
    """``rules``: ordered Rules, the first that full-matches a layer sets its settings (defaults otherwise);
    with no ``targets``, the rules' patterns are the targets."""
    rules = [r if isinstance(r, Rule) else Rule(**r) for r in rules]
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if allocate not in ALLOCATIONS:
        raise UsageError(f"--allocate {allocate!r} is unknown; choose one of {', '.join(ALLOCATIONS)}")
    if allocate == "sensitivity" and param_ratio is None:
        raise UsageError("--allocate sensitivity spreads a --param-ratio budget; give --param-ratio R "
                         "instead of --rank K")
    if rank is not None and param_ratio is not None or (rank is None and param_ratio is None and not rules):
        raise UsageError("give exactly one of --rank K or --param-ratio R")
    if rank is not None and rank <= 0:
        raise UsageError(f"--rank must be a positive integer, got {rank}")
    if param_ratio is not None and not (0 < param_ratio < 1):
        raise UsageError(f"--param-ratio must be between 0 and 1 (exclusive), got {param_ratio}")
    omega = _omega(omega, "--omega", required=method == "sine" and not rules)
    targets = list(targets) or [r.match for r in rules]
    names = select_targets(src.shapes, src.dtypes, targets, exclude, tied=tied_heads(src), source=src.display)
    if not names:
        raise UsageError(f"no layer to compress in {src.display}; pass --target REGEX")
    plan = Plan(src.display, method, rank, param_ratio, omega if method == "sine" else None,
                list(targets), list(exclude), seed, steps, rules=rules, allocate=allocate)
    rule_pats = compile_patterns([r.match for r in rules], "rule")
    for name in names:
        info = src.tensors[name + ".weight"]
        m, n = info.shape
        i = next((i for i, p in enumerate(rule_pats) if p.fullmatch(name)), None)
        meth, rank_, ratio, om = _settings(rules[i] if i is not None else None, name,
                                           method, rank, param_ratio, omega)
        k = rank_ if rank_ is not None else rank_for_ratio(m, n, ratio, meth)
        lp = LayerPlan(name, (m, n), info.dtype, meth, k, om if meth == "sine" and om != "auto" else None,
                       linear_rank=split_rank(k) if meth == "sine" else 0, rule=i)
        if k <= 0:
            lp.keep_dense = f"--param-ratio {ratio} leaves no rank for a {m}x{n} layer"
        elif lp.factored_params >= lp.dense_params:
            lp.keep_dense = f"rank {k} is at or above break-even ({m * n // (m + n)}) for {m}x{n}: nothing saved"
        plan.layers.append(lp)
    return plan


def _settings(rule: Rule | None, name: str, method, rank, param_ratio, omega):
    """(method, rank, param_ratio, omega) of one layer: the rule's values over the defaults."""
    if rule is None:
        meth, size, om = method, (rank, param_ratio), omega
    else:
        meth = rule.method or method
        sized = rule.rank is not None or rule.param_ratio is not None
        size = (rule.rank, rule.param_ratio) if sized else (rank, param_ratio)
        om = rule.omega if rule.omega is not None else omega
    where = f"layer {name!r}" + (f" (rule {rule.match!r})" if rule else "")
    if meth not in METHODS:
        raise UsageError(f"{where}: method {meth!r} is unknown; choose one of {', '.join(METHODS)}")
    k, ratio = size
    if (k is None) == (ratio is None):
        raise UsageError(f"{where}: needs exactly one of rank or param_ratio (in its rule or the defaults)")
    if k is not None and (not isinstance(k, int) or k <= 0):
        raise UsageError(f"{where}: rank must be a positive integer, got {k}")
    if ratio is not None and not (0 < ratio < 1):
        raise UsageError(f"{where}: param_ratio must be between 0 and 1 (exclusive), got {ratio}")
    om = _omega(om, f"{where}: omega", required=meth == "sine")
    return meth, k, ratio, om


def _omega(om, label: str, required: bool):
    """ω as given: 'auto' or a number (a numeric string is parsed); ``required``: it must then be
    'auto' or positive and finite (a sine layer's)."""
    if isinstance(om, str) and om != "auto":
        try:
            om = float(om)
        except ValueError:
            raise UsageError(f"{label} must be 'auto' or a positive number, got {om!r}") from None
    if required and om != "auto" and (not isinstance(om, (int, float)) or not math.isfinite(om) or om <= 0):
        raise UsageError(f"{label} must be 'auto' or a positive finite number, got {om}")
    return om
