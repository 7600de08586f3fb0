"""In-place compression of a live model: ``compress_(model, FactorizeConfig(...))`` or ``compress_(model, rank=...)``."""

from __future__ import annotations

import torch
from torch import nn

from ..calib.capture import capture_grams
from ..calib.data import CalibData
from ..config import FactorizeConfig, make_config
from ..io.memory import module_source
from ..nn.surgery import build_module, replaceable, swap_module
from .calibrate import Calibration
from .fitting import fit_layers, settle
from .load import attach_hf
from .plan import build_plan


def compress_(model: nn.Module, config: FactorizeConfig | None = None, /, *,
              calib: list[dict[str, torch.Tensor]] | None = None, **settings) -> list[dict]:
    """Replace the chosen ``nn.Linear`` layers of ``model`` by fitted sine (or SVD) low-rank modules.

    Same plan and per-layer fits as ``sinecompress factorize``, with the same settings and defaults.
    ``calib``: batches of keyword inputs for ``model(**batch)``; with them every fit is activation-aware
    (the layers' Grams are captured on ``model`` first), without them the fit is weight-space. The
    end-to-end fine-tune and the sequential mode belong to ``factorize``. Returns one record per
    replaced layer.
    """
    config = make_config(config, **settings)
    src = module_source(model)
    plan = build_plan(src, config)
    cal = None
    if calib:
        names = [lp.name for lp in plan.compressed]
        cal = Calibration(model, CalibData(list(calib), f"{len(calib)} batches"), capture_grams(model, names, calib))
    factors = fit_layers(src, plan, cal=cal)
    plan = settle(plan, factors)
    records = []
    for lp in plan.compressed:
        old = model.get_submodule(lp.name)
        f = factors[lp.name]
        rec = lp.record(rel_error=f["rel_error"], act_error=f.get("act_error"))
        if replaceable(old, rec):
            continue  # a 2-D weight that is not a linear layer's (e.g. a parameter matrix): leave it
        new = build_module(rec, f, old.bias.detach() if old.bias is not None else None)
        swap_module(model, lp.name, new.to(old.weight.device))
        records.append(rec.to_json())
    if records:
        attach_hf(model)  # a transformers model's save_pretrained then writes the compressed format
    return records
