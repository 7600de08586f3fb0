"""Truncated SVD, the linear baseline and the start of every fit, and the weight-space error."""

from __future__ import annotations

import torch

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
