"""Activation-aware fits: minimise ‖(Ŵ − W) L‖_F with L Lᵀ = XᵀX (+ damping).

‖X (Ŵ − W)ᵀ‖² = tr((Ŵ − W) XᵀX (Ŵ − W)ᵀ) = ‖(Ŵ − W) L‖², so a Cholesky factor of the
calibration Gram matrix turns "error on what the layer sees" into a Frobenius error.

* ``whitened_svd``: the closed-form optimum among rank-k linear maps (SVD-LLM):
  SVD of W L, truncate, map back with L⁻¹.
* the sine hybrid (``fit/sine.py``) minimises the same whitened error.
* ``shifted_target``: when earlier layers are already compressed, the layer sees X̃ instead of X;
  fitting ‖X̃ Ŵᵀ − X Wᵀ‖ equals fitting ‖(Ŵ − W*) L̃‖ (+ a constant) with W* = W Cᵀ G̃⁻¹,
  C = X̃ᵀX, G̃ = X̃ᵀX̃, so the same fitters serve the sequential mode.
"""

from __future__ import annotations

import torch

DEFAULT_DAMP = 1e-2  # relative to the mean diagonal of XᵀX


def damped(gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """XᵀX + λI in float64, λ = ``damp`` × its mean diagonal: one n×n copy (no identity matrix, which for a
    5632-wide layer is another 242 MiB)."""
    g = gram.double().clone() if gram.dtype == torch.float64 else gram.double()
    lam = damp * float(g.diagonal().mean().clamp_min(1e-12))
    g.diagonal().add_(lam)
    return g


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
