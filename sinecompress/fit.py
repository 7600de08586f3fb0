"""Weight-space fits: truncated SVD (the linear baseline) and the sine fit.

The activation-aware fits live in ``fit_activation.py``; everything here needs only W.
"""

from __future__ import annotations

import math

import torch

from .layers import sine_weight

# Above this many rows/cols an exact SVD costs seconds; a randomized one is enough for a top-k start.
RANDOMIZED_SVD_MIN_DIM = 2048


def truncated_svd(w: torch.Tensor, rank: int, exact: bool | None = None, seed: int = 0):
    """Balanced rank-k factors (U√S, V√S) of ``w`` in float32, so that ``u @ v.T`` ≈ w."""
    w = w.float()
    if exact is None:
        exact = min(w.shape) < RANDOMIZED_SVD_MIN_DIM or rank > min(w.shape) // 4
    if exact:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(w, q=min(rank + 16, min(w.shape)), niter=4)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    root = s.sqrt()
    return u * root, v * root


def rel_error(w_hat: torch.Tensor, w: torch.Tensor) -> float:
    w = w.float()
    return float(torch.linalg.norm(w_hat.float() - w) / torch.linalg.norm(w).clamp_min(1e-30))


def random_phase_factors(m, n, rank, omega, generator, device=None):
    """Factors whose phase ω·UVᵀ has entries of std ≈ 1 rad: real phase, out of the linear regime.

    A small-angle start (a·sin(ω·W_k) ≈ W_k) never leaves the linear regime under Adam, so
    the sine part must start with phases of order one.
    """
    scale = (1.0 / (omega * math.sqrt(rank))) ** 0.5
    u = torch.randn(m, rank, generator=generator, device=device) * scale
    v = torch.randn(n, rank, generator=generator, device=device) * scale
    return u, v


def fit_sine(w: torch.Tensor, rank: int, omega: float, linear_rank: int = 0, amplitude: str = "row",
             steps: int = 300, lr: float = 2e-2, seed: int = 0) -> dict:
    """Fit ``L_u L_vᵀ + a ⊙ sin(ω U Vᵀ)`` to ``w`` in weight space (Frobenius error).

    ``rank`` is the sine part's rank; ``linear_rank`` the linear part's (truncated-SVD start).
    Returns the factors (float32) and the relative error.
    """
    w = w.float()
    m, n = w.shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    lin_u = lin_v = None
    target = w
    if linear_rank > 0:
        lin_u, lin_v = truncated_svd(w, linear_rank, seed=seed)
        target = w - lin_u @ lin_v.T
    u, v = random_phase_factors(m, n, rank, omega, g)
    u, v = u.to(w.device), v.to(w.device)
    # Least-squares amplitude for the random start: a_i = <s_i, r_i>/<s_i, s_i>.
    s = torch.sin(omega * (u @ v.T))
    if amplitude == "row":
        amp = (s * target).sum(1) / (s * s).sum(1).clamp_min(1e-12)
    else:
        amp = ((s * target).sum() / (s * s).sum().clamp_min(1e-12)).reshape(1)
    params = [u, v, amp] + ([lin_u, lin_v] if lin_u is not None else [])
    for p in params:
        p.requires_grad_(True)
    # Adam steps are ~lr in absolute units, so scale lr by each tensor's own size.
    opt = torch.optim.Adam([{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))}
                            for p in params])
    norm2 = (w * w).sum().clamp_min(1e-30)
    best = (float("inf"), None)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((sine_weight(u, v, omega, amp, lin_u, lin_v) - w) ** 2).sum() / norm2
        loss.backward()
        if loss.detach().item() < best[0]:
            best = (loss.detach().item(), [p.detach().clone() for p in params])
        opt.step()
    with torch.no_grad():
        final = ((sine_weight(u, v, omega, amp, lin_u, lin_v) - w) ** 2).sum() / norm2
    if final.item() < best[0]:
        best = (final.item(), [p.detach().clone() for p in params])
    vals = best[1]
    out = {"u": vals[0], "v": vals[1], "amp": vals[2], "lin_u": None, "lin_v": None}
    if lin_u is not None:
        out["lin_u"], out["lin_v"] = vals[3], vals[4]
    out["rel_error"] = math.sqrt(best[0])
    return out


def lowrank_params(m: int, n: int, rank: int) -> int:
    return rank * (m + n)


def sine_params(m: int, n: int, rank: int, linear_rank: int = 0, amplitude: str = "row") -> int:
    amp = m if amplitude == "row" else 1
    return (rank + linear_rank) * (m + n) + amp
