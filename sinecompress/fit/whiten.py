"""Activation-aware fits: minimise ‖(Ŵ − W) L‖_F with L Lᵀ = XᵀX (+ damping).

‖X (Ŵ − W)ᵀ‖² = tr((Ŵ − W) XᵀX (Ŵ − W)ᵀ) = ‖(Ŵ − W) L‖², so a Cholesky factor of the
calibration Gram matrix turns "error on what the layer sees" into a Frobenius error.

* ``whitened_svd``: the closed-form optimum among rank-k linear maps (SVD-LLM):
  SVD of W L, truncate, map back with L⁻¹.
* ``gram_whitened_svd``: the same optimum from the eigenvectors of the smaller of (W L)(W L)ᵀ = W G Wᵀ
  and (W L)ᵀ(W L), never forming the Cholesky factor of a wide layer's Gram nor an SVD's workspace
  (a 2048×5632 layer: 167 MiB of transient memory instead of 726, ``benchmarks/whiten_memory.py``;
  fitting an LLM block by block, the widest layer's whitening was the peak).
* ``activation_error``: ‖(Ŵ − W) L‖ / ‖W L‖ from the Gram itself, tr(E G Eᵀ), no Cholesky factor.
* the sine hybrid (``fit/sine.py``) minimises the same whitened error.
* ``shifted_target``: when earlier layers are already compressed, the layer sees X̃ instead of X;
  fitting ‖X̃ Ŵᵀ − X Wᵀ‖ equals fitting ‖(Ŵ − W*) L̃‖ (+ a constant) with W* = W Cᵀ G̃⁻¹,
  C = X̃ᵀX, G̃ = X̃ᵀX̃, so the same fitters serve the sequential mode.
"""

from __future__ import annotations

import math

import torch

from .svd import row_gram, top_eigen

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
    """Relative activation error ‖(Ŵ − W) L‖ / ‖W L‖ from the Cholesky factor, in float32: the reference the
    fits' ``activation_error`` is tested against (and the earlier route ``benchmarks/whiten_memory.py`` times)."""
    L = L.to(torch.float32)
    w = w.float()
    return float(torch.linalg.norm((w_hat.float() - w) @ L) / torch.linalg.norm(w @ L).clamp_min(1e-30))


def _times_gram(a: torch.Tensor, gram: torch.Tensor, cols: int = 1024) -> torch.Tensor:
    """A G in float64 with G read a block of columns at a time: a float32 Gram is never copied whole."""
    out = torch.empty(a.shape[0], gram.shape[1], dtype=torch.float64, device=a.device)
    for j in range(0, gram.shape[1], cols):
        out[:, j:j + cols] = a @ gram[:, j:j + cols].double()
    return out


def _gram_trace(a: torch.Tensor, gram: torch.Tensor, lam: float, b: torch.Tensor | None = None,
                rows: int = 256) -> float:
    """tr(E (G + λI) Eᵀ), E = A − B, a block of rows at a time (no m×n copies). E G is a float32 product and
    the sum is float64: E is formed first, so nothing cancels. In float64 (G read in float64 a block at a
    time) the errors of a Llama-2-7B-shaped block had taken longer than its fits (cProfile, this repo's
    ``llm_memory.py`` shape)."""
    g = gram.float()  # no copy for the float32 Grams that calibration captures
    total = 0.0
    for i in range(0, a.shape[0], rows):
        c = a[i:i + rows].float() if b is None else a[i:i + rows].float() - b[i:i + rows].float()
        total += float(((c @ g) * c).sum(dtype=torch.float64) + lam * (c * c).sum(dtype=torch.float64))
    return total


def _damping(gram: torch.Tensor, damp: float) -> float:
    return damp * float(gram.diagonal().double().mean().clamp_min(1e-12))


def activation_error(w_hat: torch.Tensor, w: torch.Tensor, gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> float:
    """Relative activation error ‖(Ŵ − W) L‖ / ‖W L‖, L Lᵀ = XᵀX + λI, computed from the Gram."""
    lam = _damping(gram, damp)
    num = _gram_trace(w_hat, gram, lam, w)
    return math.sqrt(max(num, 0.0) / max(_gram_trace(w, gram, lam), 1e-60))


def gram_whitened_svd(w: torch.Tensor, gram: torch.Tensor, rank: int, damp: float = DEFAULT_DAMP,
                      rows: int = 256):
    """``whitened_svd(w, chol(gram), rank)`` through an eigendecomposition of the smaller side. Returns
    (u, v, error): the error ‖(Ŵ − W) L‖ / ‖W L‖ of the optimum comes from the eigenvalues, the share of
    the trace they drop (Eckart–Young), so no second pass over W and G measures it. It is the error in the
    Gram as damped for the fit: where ``chol`` had to add damping, it can differ a little from
    ``activation_error``'s, which the reported errors use.

    With σᵢ², Uᵢ the eigenpairs of W G Wᵀ (G damped), the optimum is Uₖ Uₖᵀ W: u = U σ^½, v = Wᵀ U σ^-½,
    the same balanced factors as the SVD's. When W is taller than wide, (W L)ᵀ(W L) = Lᵀ (WᵀW) L is the
    smaller matrix and L (n×n, the small side) is formed. W is read in float64 a block of rows at a time
    and the factors are written in float32 as they are made: no float64 copy of W, W L or the tall factor.
    (Forming (W L)ᵀ(W L) by blocks of rows of W L instead of Lᵀ (WᵀW) L holds one n×n matrix fewer, but cost
    10 % more time at Llama-2-7B's shape and did not lower its peak, section llm_memory_7b_rows.)"""
    m, n = w.shape
    dev = w.device
    if m <= n:
        lam = _damping(gram, damp)
        k_mat = torch.empty(m, m, dtype=torch.float64, device=dev)  # W (G + λI) Wᵀ
        for i in range(0, m, rows):
            wi = w[i:i + rows].double()
            p = _times_gram(wi, gram).add_(wi, alpha=lam)
            for j in range(0, m, 1024):
                k_mat[i:i + rows, j:j + 1024] = p @ w[j:j + 1024].double().T
        total = float(k_mat.diagonal().sum())
        evecs, root, inv_root = top_eigen(k_mat, rank)
        del k_mat
        left = evecs * inv_root
        u = (evecs * root).float()
        v = torch.empty(n, left.shape[1], dtype=torch.float32, device=dev)  # Wᵀ U σ^-½, by columns of W
        for j in range(0, n, 1024):
            v[j:j + 1024] = (w[:, j:j + 1024].double().T @ left).float()
        return u, v, _dropped_share(total, root)
    L64 = chol(gram, damp)
    wtw = row_gram(w, rows)
    k_mat = L64.T @ wtw @ L64
    del wtw
    total = float(k_mat.diagonal().sum())
    evecs, root, inv_root = top_eigen(k_mat, rank)
    del k_mat
    right = L64 @ (evecs * inv_root)
    u = torch.empty(m, right.shape[1], dtype=torch.float32, device=dev)  # W L V σ^-½, by rows
    for i in range(0, m, rows):
        u[i:i + rows] = (w[i:i + rows].double() @ right).float()
    v = torch.linalg.solve_triangular(L64.T, evecs * root, upper=True)
    return u, v.float(), _dropped_share(total, root)


def _dropped_share(total: float, root: torch.Tensor) -> float:
    """√(1 − Σ kept σ² / ‖W L‖²) from ``top_eigen``'s σ^½ (σ² = root⁴) and the trace of W L's Gram."""
    kept = float((root.double() ** 4).sum())
    return math.sqrt(max(total - kept, 0.0) / max(total, 1e-300))


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
