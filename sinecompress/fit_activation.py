"""Activation-aware fits: minimise ‖(Ŵ − W) L‖_F with L Lᵀ = XᵀX (+ damping).

‖X (Ŵ − W)ᵀ‖² = tr((Ŵ − W) XᵀX (Ŵ − W)ᵀ) = ‖(Ŵ − W) L‖², so a Cholesky factor of the
calibration Gram matrix turns "error on what the layer sees" into a Frobenius error.

* ``whitened_svd``: the closed-form optimum among rank-k linear maps (SVD-LLM):
  SVD of W L, truncate, map back with L⁻¹.
* ``fit_hybrid``: ``Ŵ = A Bᵀ + a ⊙ sin(ω U Vᵀ)``; the linear part starts from whitened SVD, the sine
  part from a *residual phase*: ω·UVᵀ is the best rank-r whitened approximation of what the linear
  part leaves (the next components of the same whitened SVD), scaled to about 1 rad, with a least-squares (whitened) per-row amplitude; then Adam on
  the whitened error. At 1 rad the sine starts pointed along the residual but well outside its
  small-angle regime, which Adam never leaves (DESIGN.md). Random phase, the earlier start, needs
  several times the steps at high rank (docs/fitting.md).
* ``shifted_target``: when earlier layers are already compressed, the layer sees X̃ instead of X;
  fitting ‖X̃ Ŵᵀ − X Wᵀ‖ equals fitting ‖(Ŵ − W*) L̃‖ (+ a constant) with W* = W Cᵀ G̃⁻¹,
  C = X̃ᵀX, G̃ = X̃ᵀX̃, so the same fitters serve the sequential mode.
"""

from __future__ import annotations

import math

import torch

from .fit import random_phase_factors
from .layers import sine_weight

DEFAULT_DAMP = 1e-2  # relative to the mean diagonal of XᵀX
# Relative Adam step of the hybrid fit: 0.1 reached 4-11 % lower activation error than 0.01 in 300 steps
# on MiniLM layers (docs/fitting.md); at 0.01 the random phase barely moves and the sine part is wasted.
FIT_LR = 0.1
PHASE_STD = 1.0  # rad: std of the residual-phase start (docs/fitting.md: 1 and 2 close, 0.5 worse)


def damped(gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> torch.Tensor:
    g = gram.double()
    lam = damp * float(g.diagonal().mean().clamp_min(1e-12))
    return g + lam * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)


def chol(gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """Lower Cholesky factor L of the damped Gram matrix (float64), with more damping if needed."""
    for extra in (1.0, 10.0, 100.0, 1000.0):
        L, info = torch.linalg.cholesky_ex(damped(gram, damp * extra))
        if int(info) == 0:
            return L
    raise ValueError("calibration Gram matrix is not positive definite even with heavy damping")


def whitened_error(w_hat: torch.Tensor, w: torch.Tensor, L: torch.Tensor) -> float:
    """Relative activation error ‖(Ŵ − W) L‖ / ‖W L‖."""
    L = L.to(torch.float32)
    w = w.float()
    return float(torch.linalg.norm((w_hat.float() - w) @ L) / torch.linalg.norm(w @ L).clamp_min(1e-30))


def whitened_svd(w: torch.Tensor, L: torch.Tensor, rank: int):
    """Factors (u, v), float32, of the best rank-k Ŵ = u vᵀ in ‖(Ŵ − W) L‖ (closed form)."""
    w64, L64 = w.double(), L.double()
    U, S, Vh = torch.linalg.svd(w64 @ L64, full_matrices=False)
    U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    root = S.sqrt()
    # vᵀ = √S Vh L⁻¹  ⇔  Lᵀ v = Vhᵀ √S
    v = torch.linalg.solve_triangular(L64.T, Vh.T * root, upper=True)
    return (U * root).float(), v.float()


def shifted_target(w: torch.Tensor, gram_shifted: torch.Tensor, cross: torch.Tensor,
                   damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """W* = W Cᵀ G̃⁻¹ with C = X̃ᵀX: the map that best reproduces X Wᵀ from the shifted inputs X̃."""
    g = damped(gram_shifted, damp)
    return (torch.linalg.solve(g, cross.double() @ w.double().T)).T.float()


def phase_factors(p: torch.Tensor, q: torch.Tensor, omega: float, std: float = PHASE_STD):
    """Scale factors so that the phase ω·(p qᵀ) has entries of std ``std`` rad; None when p qᵀ is
    (numerically) zero."""
    spread = float((p @ q.T).std())
    if not spread > 1e-12:
        return None
    s = math.sqrt(std / spread / omega)
    return p * s, q * s


def fit_hybrid(w: torch.Tensor, L: torch.Tensor, rank: int, linear_rank: int, omega: float,
               steps: int = 300, lr: float = FIT_LR, seed: int = 0, amp_scale: float = 1.0,
               phase: str = "residual", phase_std: float = PHASE_STD) -> dict:
    """Fit ``A Bᵀ + a ⊙ sin(ω U Vᵀ)`` (sine rank ``rank``, linear rank ``linear_rank``) to ``w``
    in the whitened metric. ``phase``: "residual" (default) or "random" start of the sine part.
    Returns float32 factors, the start's and the fit's relative error."""
    w = w.float()
    dev = w.device
    L32 = L.to(dev, torch.float32)
    m, n = w.shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    target_w = w @ L32
    norm2 = (target_w * target_w).sum().clamp_min(1e-30)
    # One whitened SVD serves both parts: its first components are the linear part's optimum, and the
    # next ones are the whitened SVD of the residual that part leaves (the residual-phase start).
    wu, wv = whitened_svd(w, L, linear_rank + rank)
    wu, wv = wu.to(dev), wv.to(dev)
    lin_u = lin_v = None
    resid = w
    if linear_rank > 0:
        lin_u, lin_v = wu[:, :linear_rank].contiguous(), wv[:, :linear_rank].contiguous()
        resid = w - lin_u @ lin_v.T
    start_err = float(torch.linalg.norm(resid @ L32) ** 2 / norm2)
    start = phase_factors(wu[:, linear_rank:], wv[:, linear_rank:], omega, phase_std) if phase == "residual" else None
    u, v = start if start is not None else random_phase_factors(m, n, rank, omega, g)
    u, v = u.to(dev), v.to(dev)
    with torch.no_grad():
        s = torch.sin(omega * (u @ v.T))
        sl, rl = s @ L32, resid @ L32
        amp = amp_scale * (sl * rl).sum(1) / (sl * sl).sum(1).clamp_min(1e-12)
    params = [u, v, amp] + ([lin_u, lin_v] if lin_u is not None else [])
    for p in params:
        p.requires_grad_(True)
    # Adam moves each entry by ~lr in absolute units; scale by each tensor's own magnitude.
    opt = torch.optim.Adam([{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))}
                            for p in params])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))

    def loss_fn():
        e = (sine_weight(u, v, omega, amp, lin_u, lin_v) - w) @ L32
        return (e * e).sum() / norm2

    best = (float("inf"), None)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if loss.detach().item() < best[0]:
            best = (loss.detach().item(), [p.detach().clone() for p in params])
        opt.step()
        sched.step()
    with torch.no_grad():
        final = loss_fn().detach().item()
    if final < best[0]:
        best = (final, [p.detach().clone() for p in params])
    vals = best[1]
    out = {"u": vals[0], "v": vals[1], "amp": vals[2], "lin_u": None, "lin_v": None}
    if lin_u is not None:
        out["lin_u"], out["lin_v"] = vals[3], vals[4]
    out["act_error"] = math.sqrt(max(best[0], 0.0))
    out["start_act_error"] = math.sqrt(max(start_err, 0.0))
    return out


def fit_calibrated(w: torch.Tensor, gram: torch.Tensor, method: str, rank: int, linear_rank: int = 0,
                   omega: float | None = None, steps: int = 300, seed: int = 0, damp: float = DEFAULT_DAMP,
                   lr: float = FIT_LR) -> dict:
    """One layer's activation-aware fit. ``method``: "wsvd" (closed form) or "sine" (hybrid).

    ``rank`` is the total rank (the sine part gets ``rank - linear_rank``). Returns float32 factors
    (u, v[, amp, lin_u, lin_v]), ``act_error`` (‖(Ŵ−W)L‖/‖WL‖) and ``start_act_error``.
    """
    L = chol(gram, damp)
    w = w.float()
    if method in ("wsvd", "svd"):
        u, v = whitened_svd(w, L, rank)
        err = whitened_error(u @ v.T, w, L)
        return {"u": u, "v": v, "act_error": err, "start_act_error": err}
    return fit_hybrid(w, L, rank - linear_rank, linear_rank, omega, steps=steps, lr=lr, seed=seed)
