"""Truncated SVD, the linear baseline and the start of every fit, and the weight-space error."""

from __future__ import annotations

import math

import torch

# Above this many rows/cols an exact SVD costs seconds; a randomized one is enough for a top-k start.
RANDOMIZED_SVD_MIN_DIM = 2048


def truncated_svd(w: torch.Tensor, rank: int, exact: bool | None = None, seed: int = 0,
                  dtype: torch.dtype = torch.float32):
    """Balanced rank-k factors (U√S, V√S) of ``w`` in ``dtype``, so that ``u @ v.T`` ≈ w. The Gram route
    (large matrices) writes them in ``dtype`` directly: no float32 copy of a large factor besides."""
    if exact is None:
        exact = min(w.shape) < RANDOMIZED_SVD_MIN_DIM or rank > min(w.shape) // 4
    if exact and min(w.shape) >= RANDOMIZED_SVD_MIN_DIM:
        return truncated_svd_by_gram(w, rank, dtype=dtype)  # reads w by blocks of rows, in its own dtype
    w = w.float()
    if exact:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(w, q=min(rank + 16, min(w.shape)), niter=4)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    root = s.sqrt()
    return (u * root).to(dtype), (v * root).to(dtype)


def rel_error(w_hat: torch.Tensor, w: torch.Tensor, rows: int | None = None) -> float:
    """‖Ŵ − W‖ / ‖W‖, a block of rows at a time (no full-size difference). By default a block is about 2**20
    entries (8 MiB in float64 per temporary): 1,024 rows of a 5632-wide layer made four 44 MiB temporaries, the
    highest point of a 1.1B-shaped block's fits (``benchmarks/peak_profile.py``)."""
    rows = rows or max(1, (1 << 20) // max(w.shape[1], 1))
    num = den = 0.0
    for i in range(0, w.shape[0], rows):
        c = w[i:i + rows].double()
        num += float(((w_hat[i:i + rows].double() - c) ** 2).sum())
        den += float((c * c).sum())
    return math.sqrt(num) / max(math.sqrt(den), 1e-30)


def top_eigen(k_mat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``rank`` eigenvectors of the symmetric PSD ``k_mat`` = A Aᵀ (or AᵀA) with σ^½ and σ^-½ of
    A's singular values σ. Directions with σ below 1e-7 σ₁ carry nothing (float32 weights cannot
    resolve them) and get zeros in both, where σ^-½ would magnify rounding."""
    evals, evecs = torch.linalg.eigh(k_mat)
    # Only the kept columns are copied (flipped): the full eigenvector matrix goes when this returns.
    first = evals.shape[0] - min(rank, evals.shape[0])  # (not -rank: rank 0 would keep everything)
    evals, evecs = evals[first:].flip(0), evecs[:, first:].flip(1)
    s = evals.clamp_min(0).sqrt()
    keep = s > 1e-7 * s[:1].clamp_min(1e-300)
    root = torch.where(keep, s.sqrt(), torch.zeros_like(s))
    inv_root = torch.where(keep, 1 / s.clamp_min(1e-300).sqrt(), torch.zeros_like(s))
    return evecs, root, inv_root


def row_gram(a: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """aᵀa in float64, accumulated a block of rows at a time (no float64 copy of ``a``)."""
    g = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], rows):
        c = a[i:i + rows].double()
        g.addmm_(c.T, c)
    return g


def truncated_svd_by_gram(w: torch.Tensor, rank: int, rows: int = 4096, dtype: torch.dtype = torch.float32):
    """The exact truncated SVD of a large ``w`` from the eigenvectors of its small-side Gram (float64,
    accumulated a block of rows at a time): less memory than ``torch.linalg.svd``, which copies
    the matrix and adds a full-size U (an untied LM head is the largest matrix of a block-by-block run).
    The factors are written in ``dtype``: a bf16 head's tall factor is not also held in float32 (188 MiB)."""
    a = w if w.shape[0] >= w.shape[1] else w.T  # tall: a = U S Vᵀ with V from aᵀa
    evecs, root, inv_root = top_eigen(row_gram(a, rows), rank)
    right = evecs * inv_root
    tall = torch.empty(a.shape[0], right.shape[1], dtype=dtype, device=a.device)  # a V S^-½
    for i in range(0, a.shape[0], rows):
        tall[i:i + rows] = a[i:i + rows].double() @ right
    short = (evecs * root).to(dtype)  # V S^½
    return (tall, short) if a is w else (short, tall)


class LowRankRows:
    """Ŵ = u vᵀ, formed a block of rows at a time on indexing (``rel_error`` and ``activation_error`` read it
    that way), so measuring a large layer's fit never holds the full product."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        self.u, self.v, self.shape = u, v, (u.shape[0], v.shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.u[rows].float() @ self.v.float().T
