"""Sine fits: ``Ŵ = L_u L_vᵀ + a ⊙ sin(ω U Vᵀ)`` fitted to a pretrained weight, on one Adam loop.

* ``fit_sine``: weight space (‖Ŵ − W‖_F). The linear part starts from truncated SVD, the sine part
  from random phase with a least-squares amplitude.
* ``fit_hybrid``: activation space (‖(Ŵ − W) L‖_F, ``fit/whiten.py``). The linear part starts from
  whitened SVD, the sine part from a *residual phase*: ω·UVᵀ is the best whitened approximation of
  what the linear part leaves (the next components of the same whitened SVD), scaled to about 1 rad,
  with a least-squares (whitened) per-row amplitude.

A small-angle start (a·sin(ω·W_k) ≈ W_k) never leaves sin's linear regime under Adam (DESIGN.md), so
both starts put the phase at order one. ``rank`` is always the total rank; the sine part gets
``rank - linear_rank``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from ..weights import sine_weight
from .svd import truncated_svd
from .whiten import chol, gram_whitened_svd, whitened_svd

# Relative Adam step of the hybrid fit: 0.1 reached 4-11 % lower activation error than 0.01 in 300 steps
# on MiniLM layers (docs/fitting-measurements.md); at 0.01 the random phase barely moves and the sine part is wasted.
FIT_LR = 0.1
WEIGHT_FIT_LR = 2e-2  # the weight-space fit's relative step
PHASE_STD = 1.0  # rad: std of the residual-phase start (docs/fitting-measurements.md: 1 and 2 close, 0.5 worse)
FACTOR_KEYS = ("u", "v", "amp", "lin_u", "lin_v")


def random_phase_factors(m, n, rank, omega, generator, device=None):
    """Factors whose phase ω·UVᵀ has entries of std ≈ 1 rad: real phase, out of the linear regime."""
    scale = (1.0 / (omega * math.sqrt(rank))) ** 0.5
    u = torch.randn(m, rank, generator=generator, device=device) * scale
    v = torch.randn(n, rank, generator=generator, device=device) * scale
    return u, v


def phase_factors(p: torch.Tensor, q: torch.Tensor, omega: float, std: float = PHASE_STD):
    """Scale factors so that the phase ω·(p qᵀ) has entries of std ``std`` rad; None when p qᵀ is
    (numerically) zero."""
    spread = float((p @ q.T).std())
    if not spread > 1e-12:
        return None
    s = math.sqrt(std / spread / omega)
    return p * s, q * s


def adam_fit(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], steps: int, lr: float,
             cosine: bool) -> tuple[float, list[torch.Tensor]]:
    """Minimise ``loss_fn`` over ``params``; return (lowest loss seen, the parameters that gave it).

    Adam moves each entry by ~lr in absolute units, so each tensor's step is scaled by its own RMS;
    ``cosine`` anneals the step to zero over ``steps``. A diverged fit returns loss inf (or NaN).
    """
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))}
                            for p in params])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if cosine else None
    best = (float("inf"), [p.detach().clone() for p in params])
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if loss.detach().item() < best[0]:
            best = (loss.detach().item(), [p.detach().clone() for p in params])
        opt.step()
        if sched is not None:
            sched.step()
    with torch.no_grad():
        final = loss_fn().detach().item()
    if final < best[0]:
        best = (final, [p.detach().clone() for p in params])
    for p in params:
        p.requires_grad_(False)
    return best


class WhitenedSquare(torch.autograd.Function):
    """‖E L‖² = tr(E G Eᵀ) with G = L Lᵀ, and its gradient 2 E G, from one m×n×n product E·G. Autograd on
    ‖E L‖² needs two (E·L forward, its gradient times Lᵀ backward), and that product is the fit's main
    cost: this halves the n² part of every step."""

    @staticmethod
    def forward(ctx, e: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        eg = (e.to(g.dtype) @ g).to(e.dtype)  # a bfloat16 Gram (``gram_dtype``) takes E in bfloat16 too
        ctx.save_for_backward(eg)
        return (e * eg).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (eg,) = ctx.saved_tensors
        return 2 * grad * eg, None


# oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that still include AVX512-BF16. Below them oneDNN runs a bfloat16
# product on a reference kernel: 72x slower than float32 on an AVX-512 EPYC (BENCHMARKS.md, isa_cap_products).
_BF16_ISAS = {"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
              "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 products are native on ``device``: a CUDA device that has them, or a CPU with
    AVX512-BF16 that oneDNN is allowed to use. Elsewhere they are emulated, and slower than float32."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, hence the guard
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL"
    return dev.type == "cpu" and probe is not None and bool(probe()) and cap.strip().upper() in _BF16_ISAS


def gram_dtype_on(device: torch.device | str) -> torch.dtype:
    """The dtype of a calibrated sine fit's Gram product on ``device`` unless told: bfloat16 where native."""
    return torch.bfloat16 if fast_bf16(device) else torch.float32


def gram_square(G64: torch.Tensor, rank: int | None = None,
                dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
    """E ↦ tr(E G Eᵀ), exactly (``rank`` None, or not below n) or with G replaced by its top ``rank``
    eigenpairs plus the mean of the rest times I: G ≈ Q (Λ − μ) Qᵀ + μI. The truncated form costs two
    m×n×rank products a step instead of one m×n×n: for a wide layer (an LLM's down projection) that product
    is most of a fit step. ``dtype``: of the m×n×n product (bfloat16 halves its time where it is native;
    the sum stays float32)."""
    n = G64.shape[0]
    if rank is None or rank >= n:
        G = G64.to(dtype)
        return lambda e: WhitenedSquare.apply(e, G)
    evals, evecs = torch.linalg.eigh(G64)
    mu = float(evals[: n - rank].clamp_min(0).mean())
    q = evecs[:, n - rank:].float().contiguous()
    lam = (evals[n - rank:] - mu).float()
    return lambda e: ((e @ q).square() * lam).sum() + mu * e.square().sum()


def _factors(values: list[torch.Tensor], has_linear: bool) -> dict:
    out = dict(zip(FACTOR_KEYS, values))
    if not has_linear:
        out["lin_u"] = out["lin_v"] = None
    return out


def _row_amplitude(s: torch.Tensor, target: torch.Tensor, row: bool = True) -> torch.Tensor:
    """Least-squares amplitude of ``s`` against ``target``: a_i = <s_i, t_i>/<s_i, s_i> (or one scalar)."""
    if row:
        return (s * target).sum(1) / (s * s).sum(1).clamp_min(1e-12)
    return ((s * target).sum() / (s * s).sum().clamp_min(1e-12)).reshape(1)


def fit_sine(w: torch.Tensor, rank: int, omega: float, linear_rank: int = 0, amplitude: str = "row",
             steps: int = 300, lr: float = WEIGHT_FIT_LR, seed: int = 0) -> dict:
    """Fit ``L_u L_vᵀ + a ⊙ sin(ω U Vᵀ)`` (total rank ``rank``) to ``w`` in weight space.

    Returns float32 factors and ``rel_error`` (‖Ŵ − W‖/‖W‖, inf when the fit diverged).
    """
    w = w.float()
    m, n = w.shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    lin_u = lin_v = None
    target = w
    if linear_rank > 0:
        lin_u, lin_v = truncated_svd(w, linear_rank, seed=seed)
        target = w - lin_u @ lin_v.T
    u, v = random_phase_factors(m, n, rank - linear_rank, omega, g)
    u, v = u.to(w.device), v.to(w.device)
    amp = _row_amplitude(torch.sin(omega * (u @ v.T)), target, row=amplitude == "row")
    norm2 = (w * w).sum().clamp_min(1e-30)

    def loss_fn():
        return ((sine_weight(u, v, omega, amp, lin_u, lin_v) - w) ** 2).sum() / norm2

    params = [u, v, amp] + ([lin_u, lin_v] if lin_u is not None else [])
    loss, values = adam_fit(params, loss_fn, steps, lr, cosine=False)
    out = _factors(values, lin_u is not None)
    out["rel_error"] = math.sqrt(loss) if loss >= 0 else float("inf")
    return out


def fit_hybrid(w: torch.Tensor, L: torch.Tensor, rank: int, linear_rank: int, omega: float,
               steps: int = 300, lr: float = FIT_LR, seed: int = 0, amp_scale: float = 1.0,
               phase: str = "residual", phase_std: float = PHASE_STD, gram_rank: int | None = None,
               gram_dtype: torch.dtype | None = None) -> dict:
    """Fit ``A Bᵀ + a ⊙ sin(ω U Vᵀ)`` (total rank ``rank``, linear rank ``linear_rank``) to ``w`` in the
    whitened metric ‖(Ŵ − W) L‖. ``phase``: "residual" (default) or "random" start of the sine part.
    ``gram_rank``: optimise against the Gram truncated to that many eigenpairs (``gram_square``);
    ``gram_dtype``: of the loss's Gram product (None: ``gram_dtype_on`` the device). Either way the returned ``act_error`` is the exact one, in float32.
    Returns float32 factors, ``act_error``, the start's ``start_act_error`` (relative), and the whitened SVD
    at the whole rank that the start comes from (``wsvd_u``, ``wsvd_v``, ``wsvd_act_error``): the linear fit
    with the same parameters (one amplitude vector fewer), for the caller to keep when it is the better one."""
    w = w.float()
    dev = w.device
    L32 = L.to(dev, torch.float32)
    m, n = w.shape
    sine_rank = rank - linear_rank
    g = torch.Generator(device="cpu").manual_seed(seed)
    target_w = w @ L32
    norm2 = (target_w * target_w).sum().clamp_min(1e-30)
    # One whitened SVD serves both parts: its first components are the linear part's optimum, and the
    # next ones are the whitened SVD of the residual that part leaves (the residual-phase start).
    wu, wv = whitened_svd(w, L, rank)
    wu, wv = wu.to(dev), wv.to(dev)
    lin_u = lin_v = None
    resid = w
    if linear_rank > 0:
        lin_u, lin_v = wu[:, :linear_rank].contiguous(), wv[:, :linear_rank].contiguous()
        resid = w - lin_u @ lin_v.T
    start_err = float(torch.linalg.norm(resid @ L32) ** 2 / norm2)
    start = phase_factors(wu[:, linear_rank:], wv[:, linear_rank:], omega, phase_std) if phase == "residual" else None
    u, v = start if start is not None else random_phase_factors(m, n, sine_rank, omega, g)
    u, v = u.to(dev), v.to(dev)
    with torch.no_grad():
        s = torch.sin(omega * (u @ v.T))
        amp = amp_scale * _row_amplitude(s @ L32, resid @ L32)

    L64 = L.to(dev, torch.float64)
    G64 = L64 @ L64.T
    del L64, L32, target_w
    if gram_dtype is None:
        gram_dtype = gram_dtype_on(dev)
    approx = (gram_rank is not None and gram_rank < n) or gram_dtype != torch.float32
    exact = gram_square(G64)
    with torch.no_grad():
        wsvd_err = float(exact(wu @ wv.T - w) / norm2)
    if approx:  # one copy of the Gram at a time: the exact one comes back for the closing measure
        del exact
    square = gram_square(G64, gram_rank, gram_dtype) if approx else exact

    def loss_fn():
        return square(sine_weight(u, v, omega, amp, lin_u, lin_v) - w) / norm2

    params = [u, v, amp] + ([lin_u, lin_v] if lin_u is not None else [])
    loss, values = adam_fit(params, loss_fn, steps, lr, cosine=True)
    out = _factors(values, lin_u is not None)
    if approx:
        del square
        exact = gram_square(G64)
        with torch.no_grad():  # the approximate loss is not the error: measure the kept factors exactly
            loss = float(exact(sine_weight(out["u"], out["v"], omega, out["amp"], out["lin_u"],
                                                      out["lin_v"]) - w) / norm2)
    # tr(E G Eᵀ) in float32 can round a hair below zero on an exact fit; non-finite means diverged
    out["act_error"] = math.sqrt(max(loss, 0.0)) if math.isfinite(loss) else float("inf")
    out["start_act_error"] = math.sqrt(max(start_err, 0.0))
    out.update(wsvd_u=wu, wsvd_v=wv, wsvd_act_error=math.sqrt(max(wsvd_err, 0.0)) if math.isfinite(wsvd_err) else float("inf"))
    return out


def fit_calibrated(w: torch.Tensor, gram: torch.Tensor, method: str, rank: int, linear_rank: int = 0,
                   omega: float | None = None, steps: int = 300, seed: int = 0, lr: float = FIT_LR,
                   gram_rank: int | None = None, gram_dtype: torch.dtype | None = None) -> dict:
    """One layer's activation-aware fit. ``method``: "wsvd" (closed form) or "sine" (hybrid).

    Returns float32 factors (u, v[, amp, lin_u, lin_v]), ``act_error`` (‖(Ŵ−W)L‖/‖WL‖) and
    ``start_act_error``.
    """
    w = w.float()
    if method in ("wsvd", "svd"):
        u, v, err = gram_whitened_svd(w, gram, rank)
        return {"u": u, "v": v, "act_error": err, "start_act_error": err}
    return fit_hybrid(w, chol(gram), rank, linear_rank, omega, steps=steps, lr=lr, seed=seed, gram_rank=gram_rank,
                      gram_dtype=gram_dtype)
