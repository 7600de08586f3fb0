"""Sequential fitting: each layer is fitted to what it will really see, the outputs of the already
compressed earlier layers (X̃), while still aiming at the original model's outputs (X Wᵀ).

``capture_pair`` runs the original and the partly compressed model on the same batches and returns
G̃ = X̃ᵀX̃ and C = X̃ᵀX at one layer; ``fit_activation.shifted_target`` turns them into the target
W* whose whitened fit (in the metric of G̃) minimises ‖X̃ Ŵᵀ − X Wᵀ‖.
"""

from __future__ import annotations

import torch
from torch import nn

from .calibrate import _real_tokens


@torch.no_grad()
def capture_pair(teacher: nn.Module, student: nn.Module, name: str, batches: list[dict],
                 device: str = "cpu") -> dict:
    """``{"gram": X̃ᵀX̃, "cross": X̃ᵀX, "tokens": count}`` (float64) at module ``name``."""
    seen: dict = {}

    def grab(key):
        def fn(_mod, inputs):
            seen[key] = inputs[0].detach()
        return fn

    hooks = [teacher.get_submodule(name).register_forward_pre_hook(grab("x")),
             student.get_submodule(name).register_forward_pre_hook(grab("xs"))]
    gram = cross = None
    tokens = 0
    try:
        teacher.eval()
        student.eval()
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            teacher(**b)
            student(**b)
            mask = b.get("attention_mask")
            x, xs = (_real_tokens(seen[k], mask).double() for k in ("x", "xs"))
            gram = xs.T @ xs if gram is None else gram.add_(xs.T @ xs)
            cross = xs.T @ x if cross is None else cross.add_(xs.T @ x)
            tokens += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return {"gram": gram, "cross": cross, "tokens": tokens}


def fit_sequential(src, plan, cal, progress=None, device: str = "cpu") -> dict[str, dict]:
    """Fit the plan's layers in forward order, each to the outputs of the already compressed ones.

    The reported errors (``rel_error``, ``act_error``) are measured against the original weight and the
    original activations, as in the parallel fit, so the two modes compare directly. ``svd`` layers
    stay the plain baseline.
    """
    import copy

    from .distill import compressed_module, swap_in
    from .factorize import fit_layer
    from .fit_activation import shifted_target

    order = {n: i for i, (n, _) in enumerate(cal.model.named_modules())}
    active = sorted(plan.active, key=lambda lp: order[lp.name])
    student = copy.deepcopy(cal.model)
    out = {}
    for i, lp in enumerate(active):
        if progress:
            progress(lp.name, i, len(active))
        w = src.get(lp.name + ".weight").float()
        gram = cal.grams[lp.name]["gram"]
        if lp.method == "svd":
            f = fit_layer(w, lp, plan, gram, device)
        else:
            pair = capture_pair(cal.model, student, lp.name, cal.data.batches, device)
            f = fit_layer(shifted_target(w, pair["gram"], pair["cross"]), lp, plan, pair["gram"], device,
                          measure=(w, gram))
        bias_name = lp.name + ".bias"
        bias = src.get(bias_name) if bias_name in src.tensors else None
        kind = "sine" if lp.method == "sine" else "lowrank"
        mod = compressed_module(kind, {k: f[k] for k in ("u", "v", "amp", "lin_u", "lin_v") if k in f}, bias, lp.omega)
        swap_in(student, lp.name, mod.to(device))
        out[lp.name] = f
    if progress:
        progress("", len(active), len(active))
    return out
