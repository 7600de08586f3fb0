"""Singular values and the rank measures the report shows.

* **numerical rank**: the number of singular values above a tolerance. The default tolerance is
  numpy's ``matrix_rank`` rule, ``σ_i > max(m, n) · eps · σ_max`` with ``eps`` the machine epsilon of
  float32 (the dtype the spectra are computed in; 1.19e-7). Pass ``rtol`` for a relative rule
  ``σ_i > rtol · σ_max`` instead (e.g. 1e-3 ignores directions below 0.1 % of the top one).
* **effective rank** (Roy & Vetterli, 2007): ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j`` and
  ``H`` the Shannon entropy; between 1 and min(m, n), continuous in the matrix.
* **stable rank**: ``‖W‖_F² / ‖W‖_2²`` = ``Σ σ_i² / σ_max²``; never above the rank, robust to tiny σ.

Small layers get an exact spectrum (eigenvalues of the float64 Gram matrix, see ``_exact_sv``). Layers whose smaller side exceeds ``EXACT_MAX_DIM`` get the top
``top`` singular values from ``torch.svd_lowrank`` (``exact=True`` forces the full SVD). On a
partial spectrum the numerical rank is a lower bound when every computed σ clears the tolerance,
the stable rank stays exact (‖W‖_F comes from the entries), and the effective rank is ``None``
because the entropy needs every σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXACT_MAX_DIM = 2048  # an exact SVD of a 2048×2048 fp32 matrix takes a few seconds on 2 CPU cores
DEFAULT_TOP = 128
SINGLE_THREAD_MAX_DIM = 1024
EPS = torch.finfo(torch.float32).eps


@dataclass
class Spectrum:
    """Singular values of one matrix (descending) and what is known about the rest of them."""

    sv: torch.Tensor  # float64, descending; all of them when ``exact``, the top ones otherwise
    shape: tuple[int, int]
    fro2: float  # ‖W‖_F², exact in both cases
    exact: bool

    @property
    def sigma_max(self) -> float:
        return float(self.sv[0]) if self.sv.numel() else 0.0

    def tolerance(self, rtol: float | None = None) -> float:
        if rtol is not None:
            return rtol * self.sigma_max
        return max(self.shape) * EPS * self.sigma_max

    def numerical_rank(self, rtol: float | None = None) -> int:
        if self.sigma_max == 0.0:
            return 0
        return int((self.sv > self.tolerance(rtol)).sum())

    def numerical_rank_is_lower_bound(self, rtol: float | None = None) -> bool:
        """True when a partial spectrum ran out of computed σ before reaching the tolerance."""
        return (not self.exact and self.sv.numel() < min(self.shape)
                and self.sigma_max > 0 and float(self.sv[-1]) > self.tolerance(rtol))

    def effective_rank(self) -> float | None:
        return effective_rank(self.sv) if self.exact else None

    def stable_rank(self) -> float:
        return self.fro2 / self.sigma_max**2 if self.sigma_max > 0 else 0.0

    def energy(self, k: int) -> float | None:
        """Fraction of ‖W‖_F² that the best rank-k approximation keeps (Eckart–Young)."""
        if self.fro2 == 0:
            return 1.0
        if k > self.sv.numel() and self.sv.numel() < min(self.shape):
            return None
        return min(1.0, float((self.sv[:k] ** 2).sum()) / self.fro2)

    def normalised(self) -> list[float]:
        s = self.sigma_max
        return [float(x) / s for x in self.sv] if s > 0 else [0.0] * self.sv.numel()

    def summary(self, rtol: float | None = None, with_values: bool = True) -> dict:
        """The JSON form (schema in docs/report.md)."""
        eff = self.effective_rank()
        d = {
            "exact": self.exact,
            "numerical_rank": self.numerical_rank(rtol),
            "numerical_rank_is_lower_bound": self.numerical_rank_is_lower_bound(rtol),
            "effective_rank": None if eff is None else round(eff, 4),
            "stable_rank": round(self.stable_rank(), 4),
            "sigma_max": _sig(self.sigma_max),
            "tolerance": _sig(self.tolerance(rtol)),
        }
        if with_values:
            d["singular_values"] = [_sig(float(x)) for x in self.sv]
        return d


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def effective_rank(sv: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of σ / Σσ (0·log 0 = 0)."""
    s = sv.double()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def singular_values(w: torch.Tensor, exact: bool | None = None, top: int = DEFAULT_TOP,
                    seed: int = 0) -> Spectrum:
    """The spectrum of a 2-D matrix, computed in float32 (exact SVD or randomized top-``top``)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(w.shape)}")
    w = w.float()
    shape = (int(w.shape[0]), int(w.shape[1]))
    fro2 = float(torch.linalg.vector_norm(w, dtype=torch.float64)) ** 2
    if exact is None:
        exact = min(shape) <= EXACT_MAX_DIM or top >= min(shape)
    if exact or min(shape) == 0:
        return Spectrum(_exact_sv(w), shape, fro2, True)
    q = min(top + 16, min(shape))  # oversampling makes the top ``top`` accurate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, _ = torch.svd_lowrank(w, q=q, niter=4)
    return Spectrum(s[:top].double(), shape, fro2, False)


def _exact_sv(w: torch.Tensor) -> torch.Tensor:
    # Eigenvalues of the float64 Gram matrix of the smaller side: several times faster than an SVD
    # (and wide LAPACK SVDs are slow), with σ accurate to ~1e-8·σ_max, far below the rank tolerance.
    if min(w.shape) == 0:
        return torch.zeros(0, dtype=torch.float64)
    w = w.double()
    g = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    if g.shape[0] > SINGLE_THREAD_MAX_DIM:
        return torch.linalg.eigvalsh(g).clamp_min(0).sqrt().flip(0)
    # Small eigenproblems gain nothing from threads, and on a busy machine a multi-threaded LAPACK
    # call of this size was measured 20-70x slower than a single-threaded one (2.4 s against 0.03 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigvalsh(g).clamp_min(0).sqrt().flip(0)
    finally:
        torch.set_num_threads(threads)


def rank_measures(w: torch.Tensor, rtol: float | None = None, exact: bool | None = None) -> dict:
    """numerical, effective and stable rank of ``w`` (a convenience for tests and the spectrum command)."""
    s = singular_values(w, exact=exact)
    return {"numerical_rank": s.numerical_rank(rtol), "effective_rank": s.effective_rank(),
            "stable_rank": s.stable_rank()}


def sparkline(values: list[float], width: int = 24, floor: float = 1e-7) -> str:
    """Unicode sparkline of a normalised spectrum on a log scale from ``floor`` to 1."""
    bars = "▁▂▃▄▅▆▇█"
    if not values:
        return ""
    n = len(values)
    idx = [round(i * (n - 1) / (width - 1)) for i in range(width)] if n > width else range(n)
    lo = math.log10(floor)
    out = []
    for i in idx:
        v = max(values[i], floor)
        frac = (math.log10(v) - lo) / -lo
        out.append(bars[min(len(bars) - 1, max(0, int(frac * (len(bars) - 1) + 0.5)))])
    return "".join(out)
