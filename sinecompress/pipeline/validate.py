"""Checks on what the user asked for and what the checkpoint holds, with errors that say what to do.

Policy for non-finite weights (NaN or ±inf) in a target layer: the layer is kept dense, copied
byte for byte, with a warning. No fit can represent those values, refusing would throw away a
long run at its last layer, and the output then holds exactly what the input held.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import SineCompressWarning, UsageError
from ..io.sources import Source
from ..matching import compile_patterns, is_linear_weight, module_name
from .plan import Plan


def check_targets(src: Source, targets) -> None:
    """An explicit ``--target`` that only matches tensors which cannot be factorised is an error naming one."""
    for p in compile_patterns(targets, "--target"):
        hits, wrong = False, None
        for name, info in src.tensors.items():
            mod = module_name(name)
            if not p.fullmatch(mod):
                continue
            if is_linear_weight(name, info.shape, info.dtype):
                hits = True
                break
            wrong = wrong or (name, info)
        if not hits and wrong:
            name, info = wrong
            raise UsageError(f"--target {p.pattern!r} matches {name!r}, a {len(info.shape)}-D {info.dtype} tensor "
                             f"of shape {list(info.shape)}; only 2-D floating-point '.weight' tensors can be "
                             "factorised, so narrow the pattern")


def warn_kept_dense(plan: Plan) -> None:
    for lp in plan.layers:
        if lp.keep_dense:
            warnings.warn(f"{lp.name}: {lp.keep_dense}; keeping it dense", SineCompressWarning, stacklevel=2)


def nonfinite_reason(w: torch.Tensor) -> str | None:
    """Why a weight cannot be fitted (NaN/inf values), or None."""
    if not w.is_floating_point():
        return None
    finite = torch.isfinite(w)
    if bool(finite.all()):
        return None
    nan = int(torch.isnan(w).sum())
    return f"{nan} NaN and {int((~finite).sum()) - nan} infinite values in its weight"
