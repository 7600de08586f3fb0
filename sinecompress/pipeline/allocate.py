"""Rank allocation by sensitivity: spend a parameter budget where it lowers the error most.

Each layer's relative squared error at rank k is modelled by its tail energy, Σ_{i>k} σ_i² / Σ σ_i²,
where σ are the singular values of W L (the whitened matrix, when there is calibration data) or of W.
Adding rank k+1 to a layer lowers the sum over layers by σ_{k+1}²/Σσ² at a cost of (m + n)
parameters. The gains of one layer never increase with k, so taking the best gain per parameter
until the budget is spent (greedy) is optimal for this separable model, up to the last step.

With calibration data each layer's share is also weighted by how much the model's outputs move
when that layer's output is perturbed (``output_sensitivity``): relative error in the first
layers' outputs costs far more than in the last ones'. The linear spectrum stands in for the sine
layers too. Whether this helps is measured in docs/fitting.md (``benchmarks/minilm_allocation.py``).
"""

from __future__ import annotations

import heapq

import torch

from ..calib.capture import forward_hidden
from ..errors import UsageError
from ..fit.whiten import chol
from ..weights import factor_params
from .distill import distill_loss
from .plan import LayerPlan, Plan


def energy_share(w: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """σ_i² / Σσ² of W (or of W L with L Lᵀ = XᵀX), float64, descending."""
    w = w.double()
    if gram is not None:
        w = w @ chol(gram)
    s2 = torch.linalg.svdvals(w) ** 2
    return s2 / s2.sum().clamp_min(1e-300)


NOISE = 0.1  # relative output noise of the sensitivity probe


@torch.no_grad()
def output_sensitivity(model, names: list[str], batches: list[dict], seed: int = 0) -> dict[str, float]:
    """How much the model's outputs move per unit of relative error in each layer's output.

    For each layer in turn, Gaussian noise of NOISE × the output's RMS is added to what it returns and
    the distillation loss against the clean model (``distill.distill_loss``) is measured; the loss
    divided by NOISE² is the layer's weight. One forward pass over the calibration batches per layer.
    """
    model.eval()
    dev = next(model.parameters()).device
    batches = [{k: v.to(dev) for k, v in b.items()} for b in batches]
    clean = [forward_hidden(model, b) for b in batches]
    out = {}
    for name in names:
        g = torch.Generator().manual_seed(seed)

        def noisy(_mod, _inp, y, g=g):
            return y + NOISE * y.float().pow(2).mean().sqrt() * torch.randn(y.shape, generator=g).to(y)

        handle = model.get_submodule(name).register_forward_hook(noisy)
        try:
            loss = sum(float(distill_loss(forward_hidden(model, b), c, b.get("attention_mask")))
                       for b, c in zip(batches, clean)) / max(len(batches), 1)
        finally:
            handle.remove()
        out[name] = loss / NOISE**2
    return out


def allocate(layers: list[LayerPlan], shares: dict[str, torch.Tensor], budget: int,
             weights: dict[str, float] | None = None) -> dict[str, int]:
    """Ranks for ``layers`` whose factor parameters (amplitudes included) sum to at most ``budget``.

    ``weights`` (e.g. ``output_sensitivity``) scale each layer's error in the sum being minimised.
    Every layer keeps rank ≥ 1 and stays below its break-even rank.
    """
    ranks = {lp.name: 1 for lp in layers}
    spent = sum(_cost(lp, 1) for lp in layers)
    if spent > budget:
        raise UsageError(f"the parameter budget ({budget:,}) is below rank 1 on every targeted layer; "
                         "raise --param-ratio")
    # gains[i][k]: drop in the weighted error sum per parameter when layer i goes from rank k to k+1
    gains = [(shares[lp.name] * (weights[lp.name] if weights else 1.0) / sum(lp.shape)).tolist() for lp in layers]
    heap = []
    for i in range(len(layers)):
        _push(heap, layers, gains, i, 1)
    while heap:
        _, i, k = heapq.heappop(heap)
        step = sum(layers[i].shape)
        if spent + step > budget:
            continue  # a cheaper layer may still fit
        ranks[layers[i].name] = k + 1
        spent += step
        _push(heap, layers, gains, i, k + 1)
    return ranks


def _cost(lp: LayerPlan, k: int) -> int:
    return factor_params(*lp.shape, k, lp.kind)


def _push(heap, layers: list[LayerPlan], gains: list[list[float]], i: int, k: int):
    """Offer layer i's step from rank k to k+1, unless its spectrum or break-even ends there."""
    lp = layers[i]
    if k < len(gains[i]) and _cost(lp, k + 1) < lp.shape[0] * lp.shape[1]:
        heapq.heappush(heap, (-gains[i][k], i, k))


def apply_sensitivity(plan: Plan, src, cal=None) -> tuple[Plan, dict]:
    """Re-rank the plan's ``--param-ratio`` layers by sensitivity within the same total budget.

    With calibration (``cal``) each layer's whitened spectrum is weighted by its measured
    ``output_sensitivity``; without, the plain spectra of the weights are used, equally weighted.
    Returns the new plan and ``{"mode", "budget", "weights", "ranks": {name: [uniform, allocated]}}``
    for the summary.
    """
    pool = [lp for lp in plan.compressed if _ratio_sized(plan, lp)]
    budget = sum(lp.factored_params for lp in pool)
    shares = {lp.name: energy_share(src.get(lp.name + ".weight"), cal.grams[lp.name]["gram"] if cal else None)
              for lp in pool}
    weights = output_sensitivity(cal.model, [lp.name for lp in pool], cal.data.batches, plan.seed) if cal else None
    ranks = allocate(pool, shares, budget, weights)
    record = {lp.name: [lp.rank, ranks[lp.name]] for lp in pool}
    new = plan.with_layers(lp.with_rank(ranks[lp.name]) if lp.name in ranks else lp for lp in plan.layers)
    return new, {"mode": "sensitivity", "budget": budget,
                 "weights": {k: round(v, 6) for k, v in weights.items()} if weights else None, "ranks": record}


def _ratio_sized(plan: Plan, lp: LayerPlan) -> bool:
    """True when the layer's size comes from a param_ratio (its rule's, or the default, which
    ``build_plan`` requires with sensitivity): only a rule with its own rank opts a layer out."""
    return lp.rule is None or plan.rules[lp.rule].rank is None
