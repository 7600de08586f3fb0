"""Sequential fitting: each layer is fitted to what it will really see, the outputs of the already
compressed earlier layers (X̃), while still aiming at the original model's outputs (X Wᵀ).

``calib.capture.capture_pair`` runs the original and the partly compressed model on the same batches
and returns G̃ = X̃ᵀX̃ and C = X̃ᵀX at one layer; ``fit.whiten.shifted_target`` turns them into the
target W* whose whitened fit (in the metric of G̃) minimises ‖X̃ Ŵᵀ − X Wᵀ‖.
"""

from __future__ import annotations

import copy

import torch

from ..calib.capture import capture_pair
from ..fit.whiten import shifted_target
from ..io.sources import Source
from ..nn.surgery import build_module, swap_module
from ..progress import Progress
from .calibrate import Calibration
from .fitting import fit_layer, fitted
from .plan import Plan


def fit_sequential(src: Source, plan: Plan, progress: Progress, cal: Calibration,
                   device: str = "cpu") -> dict[str, dict]:
    """Fit the plan's layers in forward order, each to the outputs of the already compressed ones.

    The reported errors (``rel_error``, ``act_error``) are measured against the original weight and the
    original activations, as in the parallel fit, so the two modes compare directly. ``svd`` layers
    stay the plain baseline.
    """
    order = {n: i for i, (n, _) in enumerate(cal.model.named_modules())}
    todo = sorted(plan.compressed, key=lambda lp: order[lp.name])
    student = copy.deepcopy(cal.model)
    out = {}
    progress.stage("fitting", len(todo))
    for i, lp in enumerate(todo):
        progress.advance(i, lp.name)
        w = lp.oriented(src.get(lp.name + ".weight")).float()
        gram = cal.grams[lp.name]["gram"]
        if lp.method == "svd":
            f = fit_layer(w, lp, plan, gram, device)
        else:
            pair = capture_pair(cal.model, student, lp.name, cal.data.batches, device)
            f = fit_layer(shifted_target(w, pair["gram"], pair["cross"]), lp, plan, pair["gram"], device,
                          measure=(w, gram))
        bias = src.get(lp.name + ".bias") if lp.name + ".bias" in src.tensors else None
        mod = build_module(fitted(lp, f).record(f.get("omega")), f, bias, dtype=torch.float32)
        swap_module(student, lp.name, mod.to(device))
        out[lp.name] = f
    progress.advance(len(todo))
    return out
