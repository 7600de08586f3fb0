"""Coordinate MLPs (neural fields) with dense, low-rank or sine low-rank hidden layers.

Layout: ``encoding`` (optional Fourier features) → ``first`` (in→width, dense) → ``hidden.0 …
hidden.{L-1}`` (width→width, the layers a method factorises) → ``last`` (width→out, dense).
The paper's occupancy network (two 256-wide hidden layers, Gaussian activation, raw xyz input) is
``CoordinateMLP(3, 1, width=256, hidden_layers=2, activation="gaussian")``: 132,865 parameters
dense, 2,817 at k=1 sine low-rank (its Table 13: 132K / 2.8K, 2.1%).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UsageError
from .convert import convert

ACTIVATIONS = ("relu", "gaussian")
FIELD_METHODS = ("dense", "lowrank", "sine")


class FourierEncoding(nn.Module):
    """γ(p) = [p, sin(2⁰πp), cos(2⁰πp), …, sin(2^{L-1}πp), cos(2^{L-1}πp)] as in NeRF."""

    def __init__(self, in_dim: int, n_freqs: int, include_input: bool = True):
        super().__init__()
        self.in_dim, self.n_freqs, self.include_input = in_dim, n_freqs, include_input
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freqs)) * math.pi, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.n_freqs + int(self.include_input))

    def forward(self, x):
        xf = (x[..., None] * self.freqs).flatten(-2)  # (..., in_dim * n_freqs)
        parts = ([x] if self.include_input else []) + [torch.sin(xf), torch.cos(xf)]
        return torch.cat(parts, dim=-1)


class Gaussian(nn.Module):
    """exp(-x² / (2σ²)) (Ramasinghe & Lucey, 2022), the activation of the paper's occupancy experiment."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        if not sigma > 0:
            raise UsageError(f"Gaussian activation sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x):
        return torch.exp(-0.5 * (x / self.sigma) ** 2)

    def extra_repr(self):
        return f"sigma={self.sigma:g}"


def _activation(name: str, sigma: float) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gaussian":
        return Gaussian(sigma)
    raise UsageError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")


class CoordinateMLP(nn.Module):
    """A neural field: coordinates in, values out; hidden layers dense, low-rank or sine low-rank."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, hidden_layers: int = 2,
                 n_freqs: int = 0, activation: str = "relu", sigma: float = 0.1,
                 method: str = "dense", rank: int | None = None, omega: float | None = None):
        super().__init__()
        if method not in FIELD_METHODS:
            raise UsageError(f"method {method!r} is not one of {', '.join(FIELD_METHODS)}")
        if hidden_layers < 1:
            raise UsageError(f"hidden_layers must be at least 1, got {hidden_layers}")
        self.encoding = FourierEncoding(in_dim, n_freqs) if n_freqs > 0 else nn.Identity()
        enc_dim = self.encoding.out_dim if n_freqs > 0 else in_dim
        self.first = nn.Linear(enc_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(hidden_layers))
        self.last = nn.Linear(width, out_dim)
        self.act = _activation(activation, sigma)
        self.method = method
        self.plan = []
        if method != "dense":
            if rank is None:
                raise UsageError(f"method {method!r} needs a rank")
            self.plan = convert(self, [r"hidden\.\d+"], rank, omega, "sine" if method == "sine" else "lowrank")

    def forward(self, coords):
        h = self.act(self.first(self.encoding(coords)))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.last(h)
