"""In-place compression of a live model: ``compress_(model, rank=..., omega=...)``."""

from __future__ import annotations

from torch import nn

from .factorize import fit_layers, layer_record
from .format import build_module
from .load import _swap
from .module_source import module_source
from .plan import build_plan


def compress_(model: nn.Module, *, rank: int | None = None, param_ratio: float | None = None,
              omega: float | None = 100.0, method: str = "sine", targets=(), exclude=(),
              steps: int = 300, seed: int = 0) -> list[dict]:
    """Replace the chosen ``nn.Linear`` layers of ``model`` by fitted sine (or SVD) low-rank modules.

    Uses the same plan and fits as ``sinecompress factorize``; returns one record per replaced layer.
    """
    src = module_source(model)
    plan = build_plan(src, method=method, rank=rank, param_ratio=param_ratio, omega=omega,
                      targets=targets, exclude=exclude, seed=seed, steps=steps)
    factors = fit_layers(src, plan)
    records = []
    for lp in plan.active:
        f = factors[lp.name]
        rec = layer_record(lp, f)
        kind = rec["kind"]
        prefix = "lowrank_" if kind == "lowrank" else "sine_"
        named = {f"{lp.name}.{prefix}{k}": v for k, v in f.items() if k != "rel_error" and v is not None}
        old = model.get_submodule(lp.name)
        if not isinstance(old, nn.Linear):
            continue  # a 2-D weight that is not a linear layer's (e.g. a parameter matrix): leave it
        new = build_module(rec, named.__getitem__, old.bias.detach() if old.bias is not None else None)
        _swap(model, lp.name, new.to(old.weight.device))
        records.append(rec)
    return records
