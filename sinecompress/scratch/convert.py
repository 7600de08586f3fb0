"""Swap linear layers of a model for sine low-rank (or plain low-rank) layers, for training from scratch.

This is the paper's "train from scratch" setting: the replaced weights are *not* fitted to the old
ones. U and V start Kaiming-uniform, the sine layer's amplitude is the fixed scalar 1/g with
g = √n (n = input features), and ω is fixed. To compress a *trained* layer use ``fit.py`` instead.

Targets follow the project's one matching rule (``sinecompress.matching``): a regular expression
full-matched against module names. Convertible modules are ``nn.Linear`` and 1×1 ``nn.Conv2d``
(stride 1, no padding, no groups), which timm's ConvNeXt uses as its MLP when ``conv_mlp=True``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import nn

from ..config import check_omega
from ..errors import UsageError
from ..matching import compile_patterns, full_match
from ..nn.layers import LowRankLinear, SineLowRankLinear
from ..nn.surgery import swap_module
from ..weights import break_even, factor_params

METHODS = ("sine", "lowrank")


class SineLowRankConv1x1(SineLowRankLinear):
    """A sine low-rank layer standing in for a 1×1 ``nn.Conv2d``: input and output are (N, C, H, W)."""

    def forward(self, x):
        w = self.dense_weight(dtype=x.dtype)[:, :, None, None]
        return F.conv2d(x, w, None if self.bias is None else self.bias.to(x.dtype))


class LowRankConv1x1(LowRankLinear):
    """A rank-k layer standing in for a 1×1 ``nn.Conv2d``: two thin 1×1 convolutions."""

    def forward(self, x):
        h = F.conv2d(x, self.v.T.to(x.dtype)[:, :, None, None])
        return F.conv2d(h, self.u.to(x.dtype)[:, :, None, None],
                        None if self.bias is None else self.bias.to(x.dtype))


def linear_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1x1"``, or None when the module is not a dense linear map over features."""
    if isinstance(module, nn.Linear):
        return "linear"
    if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.padding in ((0, 0), "valid") and module.dilation == (1, 1) and module.groups == 1):
        return "conv1x1"
    return None


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return (f"a Conv2d with kernel {module.kernel_size}, stride {module.stride}, groups {module.groups}; "
                "only 1×1 stride-1 ungrouped convolutions act as linear layers")
    return f"a {type(module).__name__}, not nn.Linear or a 1×1 nn.Conv2d"


def check_settings(method: str, rank, omega):
    if method not in METHODS:
        raise UsageError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise UsageError(f"rank must be a positive integer, got {rank!r}")
    if method == "sine":
        if omega is None:
            raise UsageError("omega is required for method 'sine'")
        check_omega(omega)


def select_layers(module: nn.Module, targets: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Names of the convertible modules that the target patterns full-match, minus the excluded ones.

    Every target pattern must match at least one convertible module, and every exclude pattern at
    least one selected module; otherwise a ``UsageError`` names the pattern (and, when the pattern
    matched something that is not a linear layer, what it matched).
    """
    targets = list(targets)
    if not targets:
        raise UsageError("no target patterns given; pass at least one regex matching module names "
                         r"(e.g. 'blocks\.\d+\.mlp\.fc[12]')")
    tpats = compile_patterns(targets, "--target")
    xpats = compile_patterns(exclude, "--exclude")
    modules = dict(module.named_modules())
    linear = [n for n, m in modules.items() if n and linear_kind(m)]
    for p in tpats:
        if not any(p.fullmatch(n) for n in linear):
            other = next((n for n in modules if n and p.fullmatch(n)), None)
            why = (f"; it matches {other!r}, which is {_describe(modules[other])}" if other else
                   "; patterns are full-matched against module names such as "
                   + ", ".join(repr(n) for n in linear[:3]))
            raise UsageError(f"--target {p.pattern!r} matches no linear layer{why}")
    chosen = [n for n in linear if full_match(tpats, n)]
    for p in xpats:
        if not any(p.fullmatch(n) for n in chosen):
            raise UsageError(f"--exclude {p.pattern!r} matches none of the selected layers")
    return [n for n in chosen if not full_match(xpats, n)]


def convert(module: nn.Module, targets: Iterable[str], rank: int, omega: float | None = None,
            method: str = "sine", exclude: Iterable[str] = (), keep_if_larger: bool = False) -> list[dict]:
    """Replace matching linear layers of ``module`` in place; return the plan (one dict per layer).

    ``method="sine"`` gives ``SineLowRankLinear`` with the paper's from-scratch setting (fixed scalar
    amplitude 1/√in_features, fixed ω); ``"lowrank"`` gives the rank-k baseline ``LowRankLinear``.
    Biases are kept (fresh zeros, like every other weight the layer gets new values).
    With ``keep_if_larger`` a matched layer whose rank-k form would not be smaller than the dense
    layer (k(m+n) ≥ mn, e.g. a 256→1 output head) stays dense; its plan entry says so.
    """
    check_settings(method, rank, omega)
    names = select_layers(module, targets, exclude)
    plan = []
    for name in names:
        old = module.get_submodule(name)
        kind = linear_kind(old)
        if kind == "linear":
            m, n = old.out_features, old.in_features
        else:
            m, n = old.out_channels, old.in_channels
        has_bias = old.bias is not None
        bias_n = m if has_bias else 0
        entry = {"name": name, "kind": kind, "shape": [m, n], "method": method, "rank": rank,
                 "omega": float(omega) if method == "sine" else None,
                 "params_dense": m * n + bias_n, "params_factored": factor_params(m, n, rank, method, None) + bias_n}
        if factor_params(m, n, rank, method, None) >= m * n:
            if not keep_if_larger:
                raise UsageError(f"rank {rank} is at or above break-even ({break_even(m, n)}) for {name} ({m}x{n}): "
                                 "its factors would outnumber the dense weight; lower the rank or exclude the layer")
            entry.update(method="dense", params_factored=entry["params_dense"])
            plan.append(entry)
            continue
        kw = {"device": old.weight.device, "dtype": old.weight.dtype}
        if method == "sine":
            cls = SineLowRankLinear if kind == "linear" else SineLowRankConv1x1
            new = cls(n, m, rank, float(omega), bias=has_bias, amplitude="scalar",
                      learn_amplitude=False, **kw)
        else:
            cls = LowRankLinear if kind == "linear" else LowRankConv1x1
            new = cls(n, m, rank, bias=has_bias, **kw)
        new.train(old.training)
        swap_module(module, name, new)
        plan.append(entry)
    return plan


def count_params(module: nn.Module) -> int:
    """Trainable parameters (the paper's count: the fixed amplitude 1/g and ω are not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def convert_vit(model: nn.Module, rank: int, omega: float | None = None, method: str = "sine") -> list[dict]:
    """Both MLP layers of every block of a timm ``VisionTransformer`` (``blocks.N.mlp.fc1|fc2``)."""
    return convert(model, [r"blocks\.\d+\.mlp\.fc[12]"], rank, omega, method)


def convert_convnext(model: nn.Module, rank: int, omega: float | None = None,
                     method: str = "sine") -> list[dict]:
    """Both MLP layers of every block in the last stage of a timm ``ConvNeXt`` (where most parameters
    live, as in the paper), whether the MLP is ``nn.Linear`` or 1×1 ``nn.Conv2d`` (``conv_mlp``)."""
    stages = getattr(model, "stages", None)
    if stages is None or len(stages) == 0:
        raise UsageError(f"{type(model).__name__} has no 'stages'; convert_convnext expects a timm ConvNeXt")
    last = len(stages) - 1
    return convert(model, [rf"stages\.{last}\.blocks\.\d+\.mlp\.fc[12]"], rank, omega, method)
