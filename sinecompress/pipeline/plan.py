"""The plan: which layers to compress, and how. Plain frozen data, printed and stored in outputs.

Later stages never change a plan in place: allocation, ω under ``--omega auto`` and layers left dense
at fit time each give a new plan (``dataclasses.replace``), so what a stage received stays what it was.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch

from ..config import FactorizeConfig, Rule, check_omega
from ..errors import InputError, UsageError
from ..io.format import LayerRecord, factor_shapes
from ..io.hf_model import CONV1D, LINEAR, module_kinds
from ..io.sources import Source, tied_heads
from ..matching import compile_patterns, select_targets
from ..weights import break_even, factor_params

# Linear share of a sine layer's rank. Half, for both fit paths: with calibration, 50 % measured better
# than 75 % once the sine part could move (docs/fitting-measurements.md).
LINEAR_FRACTION = 0.5


@dataclass(frozen=True)
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
    transposed: bool = False  # the checkpoint stores the weight in×out (transformers' Conv1D)

    @property
    def kind(self) -> str:
        """The stored form: "sine", or "lowrank" for the linear methods."""
        return "sine" if self.method == "sine" else "lowrank"

    def oriented(self, weight: torch.Tensor) -> torch.Tensor:
        """The layer's weight as fitted, out×in, from the checkpoint's or the module's own tensor."""
        return weight.T if self.transposed else weight

    @property
    def dense_params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def factored_params(self) -> int:
        if self.keep_dense:
            return self.dense_params
        return factor_params(*self.shape, self.rank, self.kind)

    @property
    def factor_shapes(self) -> dict[str, tuple[int, ...]]:
        return factor_shapes(self.kind, *self.shape, self.rank, self.linear_rank)

    def record(self, omega: float | None = None, **errors) -> LayerRecord:
        """The layer's record in the compressed format; ``omega`` overrides the plan's (``--omega auto``)."""
        sine = self.kind == "sine"
        return LayerRecord(self.name, self.kind, self.shape, self.dtype, self.rank, self.linear_rank,
                           (omega if omega is not None else self.omega) if sine else None,
                           "row" if sine else None, errors.get("rel_error"), errors.get("act_error"), self.method,
                           self.transposed)

    def as_method(self, method: str) -> LayerPlan:
        """The same layer under a linear ``method`` (a sine layer whose fit fell back): same total rank."""
        return dataclasses.replace(self, method=method, omega=None, linear_rank=0)

    def with_rank(self, rank: int) -> LayerPlan:
        return dataclasses.replace(self, rank=rank, linear_rank=split_rank(rank) if self.method == "sine" else 0)


@dataclass(frozen=True)
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
    fallback: bool = True  # a sine layer whose fit ends worse than whitened SVD keeps the whitened SVD
    layers: tuple[LayerPlan, ...] = ()
    rules: tuple[Rule, ...] = ()
    allocate: str = "uniform"  # "sensitivity": ranks re-spread after calibration (allocate.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [dict(layer, shape=list(layer["shape"])) for layer in d["layers"]]
        d["rules"] = list(d["rules"])
        return d

    @property
    def compressed(self) -> list[LayerPlan]:
        """The layers that will be factorised (not kept dense)."""
        return [lp for lp in self.layers if not lp.keep_dense]

    def with_layers(self, layers) -> Plan:
        return dataclasses.replace(self, layers=tuple(layers))


def rank_for_ratio(m: int, n: int, ratio: float, method: str) -> int:
    """Largest total rank whose factor parameters (amplitude included) stay within ratio·m·n."""
    amp = factor_params(m, n, 0, "sine" if method == "sine" else "lowrank")
    return max(0, math.floor((ratio * m * n - amp) / (m + n)))


def split_rank(rank: int, fraction: float = LINEAR_FRACTION) -> int:
    """Linear part of a sine layer's rank; the sine part keeps at least one rank."""
    return min(int(round(rank * fraction)), rank - 1) if rank >= 2 else 0


def build_plan(src: Source, config: FactorizeConfig) -> Plan:
    """The plan ``config`` gives for ``src``: the first rule that full-matches a layer sets its settings
    (the defaults otherwise); with no ``targets``, the rules' patterns are the targets."""
    c = config
    rules = list(c.rules)
    targets = list(c.targets) or [r.match for r in rules]
    names = select_targets(src.shapes, src.dtypes, targets, c.exclude, tied=tied_heads(src), source=src.display)
    kinds = module_kinds(src)
    if kinds is not None:
        names = linear_layers(names, kinds, bool(targets), src.display)
    if not names:
        raise UsageError(f"no layer to compress in {src.display}; pass --target REGEX")
    rule_pats = compile_patterns([r.match for r in rules], "rule")
    layers = []
    for name in names:
        info = src.tensors[name + ".weight"]
        transposed = kinds is not None and kinds[name] == CONV1D
        m, n = reversed(info.shape) if transposed else info.shape
        i = next((i for i, p in enumerate(rule_pats) if p.fullmatch(name)), None)
        meth, k, ratio, om = _settings(rules[i] if i is not None else None, name, c)
        if k is None:
            k = rank_for_ratio(m, n, ratio, meth) if m and n else 0
        lp = LayerPlan(name, (m, n), info.dtype, meth, k, om if meth == "sine" and om != "auto" else None,
                       linear_rank=split_rank(k) if meth == "sine" else 0, rule=i, transposed=transposed)
        if not (m and n):
            lp = dataclasses.replace(lp, keep_dense=f"the {m}x{n} weight is empty: nothing to factorise")
        elif k <= 0:
            lp = dataclasses.replace(lp, keep_dense=f"--param-ratio {ratio} leaves no rank for a {m}x{n} layer")
        elif lp.factored_params >= lp.dense_params:
            lp = dataclasses.replace(lp, keep_dense=f"rank {k} is at or above break-even ({break_even(m, n)}) "
                                                    f"for {m}x{n}: nothing saved")
        layers.append(lp)
    return Plan(src.display, c.method, c.rank, c.param_ratio, c.omega if c.method == "sine" else None,
                targets, list(c.exclude), c.seed, c.fit.steps, c.fit.fallback, tuple(layers), tuple(rules),
                c.allocate)


def linear_layers(names: list[str], kinds: dict[str, str], explicit: bool, source: str) -> list[str]:
    """The names that are linear layers of the model the checkpoint describes. A layer the model does not
    have means the config does not belong to the weights; a 2-D weight of another module (an embedding, a
    parameter matrix) is an error when a target chose it, and is skipped by the default selection."""
    out = []
    for name in names:
        kind = kinds.get(name)
        if kind is None:
            raise InputError(f"{source}: the checkpoint holds {name + '.weight'!r}, but the model its config.json "
                             "describes has no such layer; the config does not belong to these weights (or pass "
                             "--exclude for that layer)")
        if kind in (LINEAR, CONV1D):
            out.append(name)
        elif explicit:
            raise UsageError(f"--target matches {name!r}, a module of class {kind} in the model, not a linear layer; only "
                             "linear layers (nn.Linear, transformers' Conv1D) are factorised, so narrow the pattern")
    return out


def _settings(rule: Rule | None, name: str, c: FactorizeConfig):
    """(method, rank, param_ratio, omega) of one layer: the rule's values over the defaults."""
    if rule is None:
        return c.method, c.rank, c.param_ratio, c.omega
    meth = rule.method or c.method
    sized = rule.rank is not None or rule.param_ratio is not None
    k, ratio = (rule.rank, rule.param_ratio) if sized else (c.rank, c.param_ratio)
    if k is None and ratio is None:
        raise UsageError(f"layer {name!r} (rule {rule.match!r}): needs a rank or param_ratio, in its rule or "
                         "the defaults")
    om = check_omega(rule.omega if rule.omega is not None else c.omega)
    return meth, k, ratio, om
