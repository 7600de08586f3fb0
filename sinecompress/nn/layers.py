"""Sine-activated low-rank linear layers.

``SineLowRankLinear`` computes ``y = x Ŵᵀ + b`` with

    Ŵ = L_u L_vᵀ + a ⊙ sin(ω · U Vᵀ)

where the optional linear part ``L_u L_vᵀ`` (rank ``linear_rank``, 0 by default) lets a
compressed layer keep the dominant singular directions linearly while the sine part adds
rank. ``a`` is a per-output-row or scalar amplitude, learnable or fixed (the paper's
``1/g`` with ``g = √n`` for training from scratch).

The phase ω·UVᵀ is always formed in float32: at phase ~100 a bfloat16 rounding error is
about one whole period, which would turn the weight into noise.

``SineLowRankLinear.cache_weight()`` trades the factors' memory saving for speed at inference:
Ŵ is built once and reused (see its docstring for when the cache is rebuilt or bypassed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..fit.sine import fit_sine
from ..fit.svd import truncated_svd
from ..weights import sine_weight

AMPLITUDES = ("row", "scalar")


class LowRankLinear(nn.Module):
    """Plain rank-k baseline: ``y = x (U Vᵀ)ᵀ + b`` computed as two thin matmuls."""

    def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.u = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.v = nn.Parameter(torch.empty(in_features, rank, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # Kaiming-uniform factors, scaled so U Vᵀ has the variance of a Kaiming dense weight.
        bound = math.sqrt(3.0) / math.sqrt(math.sqrt(self.rank * self.in_features))
        nn.init.uniform_(self.u, -bound, bound)
        nn.init.uniform_(self.v, -bound, bound)

    def forward(self, x):
        return F.linear(F.linear(x, self.v.T.to(x.dtype)), self.u.to(x.dtype), _cast(self.bias, x))

    def dense_weight(self):
        return self.u @ self.v.T

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int):
        """Truncated-SVD initialisation from an existing ``nn.Linear``."""
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                    device=w.device, dtype=w.dtype)
        u, v = truncated_svd(w.float(), rank)
        with torch.no_grad():
            layer.u.copy_(u)
            layer.v.copy_(v)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


class SineLowRankLinear(nn.Module):
    """``y = x Ŵᵀ + b`` with ``Ŵ = L_u L_vᵀ + a ⊙ sin(ω U Vᵀ)``; same k(m+n) factor parameters as rank k.

    ``rank`` is the total factor rank: the linear part has ``linear_rank`` of it, the sine part the rest.
    """

    _cache_on = False  # class defaults: instances made by subclasses or unpickled ones have them too
    _cache = None

    def __init__(self, in_features, out_features, rank, omega, bias=True, amplitude="row",
                 learn_amplitude=True, amplitude_init=None, linear_rank=0, device=None, dtype=None):
        super().__init__()
        if not 0 <= linear_rank < rank:
            raise ValueError(f"need 0 <= linear_rank < rank (the sine part keeps at least one rank), "
                             f"got rank {rank}, linear_rank {linear_rank}")
        if not (math.isfinite(omega) and omega > 0):
            raise ValueError(f"omega must be a positive finite number, got {omega}")
        if amplitude not in AMPLITUDES:
            raise ValueError(f"amplitude must be one of {AMPLITUDES}, got {amplitude!r}")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.omega, self.linear_rank = rank, float(omega), linear_rank
        self.amplitude = amplitude
        sine_rank = rank - linear_rank
        self.u = nn.Parameter(torch.empty(out_features, sine_rank, **kw))
        self.v = nn.Parameter(torch.empty(in_features, sine_rank, **kw))
        if amplitude_init is None:
            amplitude_init = 1.0 / math.sqrt(in_features)  # the paper's 1/g, g = √n
        amp = torch.full((out_features if amplitude == "row" else 1,), float(amplitude_init), **kw)
        if learn_amplitude:
            self.amp = nn.Parameter(amp)
        else:
            self.register_buffer("amp", amp)
        if linear_rank > 0:
            self.lin_u = nn.Parameter(torch.zeros(out_features, linear_rank, **kw))
            self.lin_v = nn.Parameter(torch.zeros(in_features, linear_rank, **kw))
        else:
            self.lin_u = self.lin_v = None
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # Training from scratch as in the paper: Kaiming-uniform U and V.
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))

    def dense_weight(self, dtype=None):
        return sine_weight(self.u, self.v, self.omega, self.amp, self.lin_u, self.lin_v,
                           dtype=dtype or self.u.dtype)

    def forward(self, x):
        if self._cache_on and not self.training and not (torch.is_grad_enabled() and self._factors_need_grad()):
            w = self._cached_weight(x.dtype, x.device)
        else:
            w = self.dense_weight(dtype=x.dtype)
        return F.linear(x, w, _cast(self.bias, x))

    def cache_weight(self, enabled: bool = True) -> SineLowRankLinear:
        """Build Ŵ once per (dtype, device) and reuse it in eval-mode forwards (costs one dense m×n tensor).

        The cache is rebuilt whenever a factor changes: in-place updates (optimizer steps,
        ``load_state_dict``, ``copy_`` under ``no_grad``) bump the tensor's version counter, and
        ``.to()`` or reassignment gives new storage, both of which are part of the cache key. It is
        dropped by ``train()`` and bypassed while autograd could need the factors' gradients (training
        mode, or grad enabled with factors that require grad), so gradients are never silently lost.
        Edits through ``.data`` bypass the version counter: call ``drop_weight_cache()`` after them.
        """
        self._cache_on, self._cache = bool(enabled), None
        return self

    def drop_weight_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        if mode:
            self._cache = None
        return super().train(mode)

    def _factors(self):
        return [t for t in (self.u, self.v, self.amp, self.lin_u, self.lin_v) if t is not None]

    def _factors_need_grad(self) -> bool:
        return any(t.requires_grad for t in self._factors())

    def _cached_weight(self, dtype, device):
        key = (dtype, device, tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._factors()))
        if self._cache is None or self._cache[0] != key:
            # A normal (not inference-mode) tensor, so it can be reused outside torch.inference_mode too.
            with torch.inference_mode(False), torch.no_grad():
                self._cache = (key, self.dense_weight(dtype=dtype).to(device))
        return self._cache[1]

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, omega: float, linear_rank: int = 0,
                    amplitude: str = "row", steps: int = 300, seed: int = 0):
        """Fit a sine low-rank layer of total rank ``rank`` to an ``nn.Linear``'s weight (weight-space fit)."""
        w = linear.weight.detach()
        f = fit_sine(w.float(), rank, omega, linear_rank=linear_rank, amplitude=amplitude,
                     steps=steps, seed=seed)
        layer = cls(linear.in_features, linear.out_features, rank, omega, linear.bias is not None,
                    amplitude=amplitude, linear_rank=linear_rank, device=w.device, dtype=w.dtype)
        layer.load_factors(f)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer

    def load_factors(self, factors: dict):
        with torch.no_grad():
            for name in ("u", "v", "amp", "lin_u", "lin_v"):
                if factors.get(name) is not None and getattr(self, name) is not None:
                    getattr(self, name).copy_(factors[name].reshape(getattr(self, name).shape))

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, omega={self.omega:g}, "
                f"linear_rank={self.linear_rank}, amplitude={self.amplitude}, bias={self.bias is not None}")


def cache_weights(model: nn.Module, enabled: bool = True) -> int:
    """``cache_weight(enabled)`` on every sine layer of ``model``; returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, SineLowRankLinear)]
    for m in layers:
        m.cache_weight(enabled)
    return len(layers)


def _cast(bias, x):
    return None if bias is None else bias.to(x.dtype)
