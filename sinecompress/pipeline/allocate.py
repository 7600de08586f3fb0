"""Rank allocation by sensitivity: spend a parameter budget where it lowers the error most.

Each layer's relative squared error at rank k is modelled by its tail energy, Σ_{i>k} σ_i² / Σ σ_i²,
where σ are the singular values of W L (the whitened matrix, when there is calibration data) or of W.
Adding rank k+1 to a layer lowers the sum over layers by σ_{k+1}²/Σσ² at a cost of (m + n)
parameters. The gains of one layer never increase with k, so taking the best gain per parameter
until the budget is spent (greedy) is optimal for this separable model, up to the last step.

With calibration data each layer's share is also weighted by how much the model's outputs move
when that layer's output is perturbed (``output_sensitivity``): relative error in the first
layers' outputs costs far more than in the last ones'. The linear spectrum stands in for the sine
layers too. Whether this helps is measured in docs/allocation.md and docs/fitting-measurements.md (``benchmarks/minilm_allocation.py``).
"""

from __future__ import annotations

import hashlib
import heapq
from functools import partial

import torch

from ..calib.blocks import row_slices
from ..calib.capture import forward_hidden
from ..errors import UsageError
from ..fit.whiten import chol
from ..progress import QUIET, Progress
from ..weights import factor_params
from .distill import batch_energy, token_energy, token_weights, tokens_alike
from .plan import LayerPlan, Plan


def energy_share(w: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """σ_i² / Σσ² of W (or of W L with L Lᵀ = XᵀX), float64, descending."""
    w = w.double()
    if gram is not None:
        w = w @ chol(gram)
    s2 = torch.linalg.svdvals(w) ** 2
    return s2 / s2.sum().clamp_min(1e-300)


NOISE = 0.1  # relative output noise the sensitivity stands for


def output_sensitivity(model, names: list[str], batches: list[dict], seed: int = 0, progress: Progress = QUIET,
                       tokens: int = 512) -> dict[str, float]:
    """How much the model's outputs move per unit of relative error in each layer's output.

    The quantity: add Gaussian noise of NOISE × the RMS of a layer's output to what it returns, measure the
    distillation loss against the clean model (``distill.distill_loss``: for a causal LM the mean over hidden
    states h_j and their T real tokens t of ‖δh_jt‖² / ‖h_jt‖², for other models ‖δh_j‖² / ‖h_j‖² on real
    tokens: ``distill.tokens_alike``), divide by NOISE². Measuring it so, a forward pass per layer,
    took hours on SmolLM2 (210 layers). To first order the loss is NOISE² rms(y)² Σ_j Σ_t tr(J_jtᵀ J_jt) /
    (T ‖h_jt‖²) / #h (J_jt = ∂h_jt/∂y), and a random probe r gives every layer's trace at once: with
    φ = Σ_j Σ_t ⟨r_jt, h_jt⟩ / (√T ‖h_jt‖), E‖∂φ/∂y‖² is that sum (Hutchinson). So: one forward and one
    backward for all layers together, one probe, per piece of a batch of at most ``tokens`` tokens (what
    the backward holds); the result is the mean over the pieces. A causal LM runs without its head, which
    the hidden states do not need. (By energy, the probe is ⟨r_j, h_j⟩ / ‖h_j‖ over real tokens.)
    """
    per_token = tokens_alike(model)
    model.eval()
    net = getattr(model, "base_model", None)
    net = net if isinstance(net, torch.nn.Module) else model
    dev = next(model.parameters()).device
    total = dict.fromkeys(names, 0.0)
    pieces = [p for b in batches for p in _pieces(b, tokens)]
    progress.stage("measuring sensitivity", len(pieces))
    for i, piece in enumerate(pieces):
        progress.advance(i, f"piece {i + 1}")
        piece = {k: v.to(dev) for k, v in piece.items()}
        grads: dict[str, list] = {n: [] for n in names}
        leaves: list[torch.Tensor] = []
        handles = [model.get_submodule(n).register_forward_hook(partial(tap, grads[n], leaves)) for n in names]
        try:
            with torch.enable_grad():
                hidden = forward_hidden(net, piece)
                phi = sum(probe(h, piece.get("attention_mask"), probe_draw(seed, i, j), per_token)
                          for j, h in enumerate(hidden))
                if leaves:  # only to the taps: the weights get no gradient, whatever their requires_grad
                    torch.autograd.backward(phi, inputs=leaves)
        finally:
            for h in handles:
                h.remove()
        for n in names:
            total[n] += sum(grads[n]) / len(hidden)
    progress.advance(len(pieces))
    return {n: v / max(len(pieces), 1) for n, v in total.items()}


def _pieces(batch: dict, tokens: int) -> list[dict]:
    """``batch`` split along its rows into pieces of at most ``tokens`` tokens (at least one row each)."""
    first = next(iter(batch.values()))
    slices = row_slices(first.shape[0], first.shape[-1], tokens) if first.dim() > 1 else [slice(None)]
    return [{k: v[s] for k, v in batch.items()} for s in slices]


def tap(seen: list, leaves: list, _mod, _inp, y):
    """Route the layer's output through a scalar leaf that needs a gradient (the weights need none), and
    add rms(y)² ‖∂φ/∂y‖² to ``seen`` when the backward reaches it; the gradient itself is not kept."""
    ms = float(y.detach().float().pow(2).mean())
    leaf = torch.zeros((), dtype=y.dtype, device=y.device, requires_grad=True)
    leaves.append(leaf)
    out = y + leaf
    out.register_hook(lambda grad: seen.append(ms * float(grad.double().pow(2).sum())))
    return out


def probe_draw(seed: int, piece: int, hidden: int) -> torch.Generator:
    """The random source of the probe at one (piece, hidden state): its own seed, so that a pass that
    visits them in another order (block by block, ``stack_sensitivity``) draws the same probes."""
    digest = hashlib.blake2b(f"{seed}/{piece}/{hidden}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def probe(h: torch.Tensor, mask: torch.Tensor | None, g: torch.Generator, per_token: bool = True) -> torch.Tensor:
    """Σ_t ⟨r_t, h_t⟩ / ‖h_t‖ / √T over the T real tokens (``per_token``; else Σ_t ⟨r_t, h_t⟩ / √(Σ_t ‖h_t‖²)),
    with a standard normal r: its gradient's expected square is ``distill.relative_error``'s first-order
    response."""
    h = h.float()
    r = torch.randn(h.shape, generator=g).to(h)
    w = token_weights(h, mask)
    if not per_token:
        return ((r * h).sum(-1) * w).sum() / batch_energy(h, w).sqrt()
    return ((r * h).sum(-1) * w / token_energy(h, w).sqrt()).sum() / w.sum().clamp_min(1).sqrt()


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


def apply_sensitivity(plan: Plan, src, cal=None, progress: Progress = QUIET) -> tuple[Plan, dict]:
    """Re-rank the plan's ``--param-ratio`` layers by sensitivity within the same total budget.

    With calibration (``cal``, the whole model) each layer's whitened spectrum is weighted by its measured
    ``output_sensitivity``; without, the plain spectra of the weights are used, equally weighted. (A model
    fitted block by block is measured block by block: ``stack_sensitivity``.) Returns the new plan and
    ``{"mode", "budget", "weights", "ranks": {name: [uniform, allocated]}}`` for the summary.
    """
    pool = sensitivity_pool(plan)
    shares = {lp.name: energy_share(lp.oriented(src.get(lp.name + ".weight")), cal.grams[lp.name]["gram"] if cal else None)
              for lp in pool}
    weights = (output_sensitivity(cal.model, [lp.name for lp in pool], cal.data.batches, plan.seed, progress)
               if cal else None)
    return rerank(plan, pool, shares, weights)


def sensitivity_pool(plan: Plan) -> list[LayerPlan]:
    """The layers an allocation may re-rank: those sized by a ``param_ratio``."""
    return [lp for lp in plan.compressed if _ratio_sized(plan, lp)]


def rerank(plan: Plan, pool: list[LayerPlan], shares: dict[str, torch.Tensor],
           weights: dict[str, float] | None) -> tuple[Plan, dict]:
    """The plan with ``pool``'s ranks allocated (``allocate``) within their uniform budget, and the record."""
    budget = sum(lp.factored_params for lp in pool)
    ranks = allocate(pool, shares, budget, weights)
    record = {lp.name: [lp.rank, ranks[lp.name]] for lp in pool}
    new = plan.with_layers(lp.with_rank(ranks[lp.name]) if lp.name in ranks else lp for lp in plan.layers)
    return new, {"mode": "sensitivity", "budget": budget,
                 "weights": {k: round(v, 6) for k, v in weights.items()} if weights else None, "ranks": record}


def _ratio_sized(plan: Plan, lp: LayerPlan) -> bool:
    """True when the layer's size comes from a param_ratio (its rule's, or the default, which
    ``build_plan`` requires with sensitivity): only a rule with its own rank opts a layer out."""
    return lp.rule is None or plan.rules[lp.rule].rank is None
