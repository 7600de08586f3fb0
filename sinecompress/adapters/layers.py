"""Adapter layers wrapping a frozen ``nn.Linear``: LoRA, DoRA, sine LoRA, sine DoRA.

Parameter names follow peft (``base_layer``, ``lora_A.weight`` (r×in), ``lora_B.weight`` (out×r),
``lora_magnitude_vector`` (out,)), so a state dict maps one-to-one onto peft's adapter layout.

    LoRA       ΔW = (α/r) · B A
    sine LoRA  ΔW = (α/r) · sin(ω · B A) / √in
    DoRA       W' = m ⊙ (W0 + ΔW) / ‖W0 + ΔW‖_row   (ΔW as in LoRA; norm detached, as DoRA does)
    sine DoRA  the same with the sine ΔW
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .functional import adapter_linear, dense_delta


class AdapterLinear(nn.Module):
    """Base class: a frozen ``base_layer`` plus rank-``r`` factors. Subclasses pick the update."""

    sine = False
    dora = False

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, omega: float = 1.0,
                 dropout: float = 0.0, lean: bool = True, fuse: bool | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear, got {type(base_layer).__name__}")
        if r <= 0:
            raise ValueError(f"rank r must be positive, got {r}")
        if self.sine and not (math.isfinite(omega) and omega > 0):
            raise ValueError(f"omega must be a positive finite number, got {omega}")
        self.base_layer = base_layer
        base_layer.weight.requires_grad_(False)
        if base_layer.bias is not None:
            base_layer.bias.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.alpha, self.omega = int(r), float(alpha), float(omega)
        self.lean, self.fuse, self.merged = lean, fuse, False
        w = base_layer.weight
        # Adapters live in float32 even on a half-precision base (as peft does): under autocast they are
        # cast per use, and the optimizer keeps full-precision state.
        fdt = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False, device=w.device, dtype=fdt)
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False, device=w.device, dtype=fdt)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if self.dora:
            self.lora_magnitude_vector = nn.Parameter(torch.empty(self.out_features, device=w.device, dtype=fdt))
        self.reset_adapter()

    @property
    def scale(self) -> float:
        """The constant in front of the update: α/r, and 1/√in more for the sine kinds."""
        c = self.alpha / self.r
        return c / math.sqrt(self.in_features) if self.sine else c

    def reset_adapter(self):
        # peft's init: A Kaiming-uniform (a=√5), B zero, so ΔW = 0 (sin 0 = 0) and the model is unchanged.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if self.dora:
            with torch.no_grad():
                self.lora_magnitude_vector.copy_(self._row_norm())

    def delta_weight(self) -> torch.Tensor:
        """The low-rank (or sine) update ΔW in float32 (before DoRA's renormalisation)."""
        return dense_delta(self.lora_A.weight, self.lora_B.weight, self.omega, self.scale, self.sine)

    @torch.no_grad()
    def _row_norm(self, delta: torch.Tensor | None = None) -> torch.Tensor:
        w = self.base_layer.weight.float() + (self.delta_weight() if delta is None else delta)
        return torch.linalg.vector_norm(w, dim=1)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W0 with the adapter folded in, float32."""
        w0 = self.base_layer.weight.float()
        delta = self.delta_weight().float()
        if not self.dora:
            return w0 + delta
        w = w0 + delta
        return w * (self.lora_magnitude_vector.float() / torch.linalg.vector_norm(w, dim=1))[:, None]

    @torch.no_grad()
    def merge(self):
        if self.merged:
            return
        w = self.base_layer.weight
        if self.dora:
            # Keep the norm used, so unmerge can divide the same scale back out.
            self._merge_norm = self._row_norm()
        w.copy_(self.merged_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            return
        w = self.base_layer.weight
        wf = w.float()
        if self.dora:
            wf = wf / (self.lora_magnitude_vector.float() / self._merge_norm)[:, None]
        w.copy_((wf - self.delta_weight()).to(w.dtype))
        self.merged = False

    def forward(self, x):
        if self.merged:
            return self.base_layer(x)
        return self._forward(x)

    def _dropped(self, x):
        return self.lora_dropout(x) if self.training and isinstance(self.lora_dropout, nn.Dropout) else x

    def _lora_out(self, xd):
        """B(A x)·scale; without autocast, x is cast to the adapters' dtype and back (as peft does)."""
        if torch.is_autocast_enabled(xd.device.type):
            return self.lora_B(self.lora_A(xd)) * self.scale
        a = self.lora_A.weight
        return (self.lora_B(self.lora_A(xd.to(a.dtype))) * self.scale).to(xd.dtype)

    def _naive_sine_out(self, xd):
        """Official-code style: autograd through the dense ΔW keeps the m×n phase and ΔW for backward."""
        A, B = self.lora_A.weight, self.lora_B.weight
        pd = torch.promote_types(A.dtype, torch.float32)
        with torch.autocast(device_type=xd.device.type, enabled=False):
            dw = torch.sin(self.omega * (B.to(pd) @ A.to(pd))) * self.scale
        return F.linear(xd, dw if torch.is_autocast_enabled(xd.device.type) else dw.to(xd.dtype))

    def _bias(self, y):
        b = self.base_layer.bias
        return y if b is None else y + b.to(y.dtype)

    def extra_repr(self):
        s = f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}"
        if self.sine:
            s += f", omega={self.omega:g}"
        return s + ("" if self.lean else ", lean=False")


class LoRALinear(AdapterLinear):
    """Plain LoRA: two thin matmuls; backward keeps x and the r-dim intermediate x Aᵀ."""

    def _forward(self, x):
        return self.base_layer(x) + self._lora_out(self._dropped(x))


class SineLoRALinear(AdapterLinear):
    sine = True

    def _forward(self, x):
        xd = self._dropped(x)
        A, B = self.lora_A.weight, self.lora_B.weight
        if not self.lean:
            return self.base_layer(x) + self._naive_sine_out(xd)
        if xd is x:
            y = adapter_linear(x, A, B, omega=self.omega, scale=self.scale, sine=True,
                               base_weight=self.base_layer.weight, fuse=self.fuse)
            return self._bias(y)
        return self.base_layer(x) + adapter_linear(xd, A, B, omega=self.omega, scale=self.scale, sine=True)


class DoRALinear(AdapterLinear):
    """DoRA. ``lean=False`` is peft's formulation (the baseline); ``lean=True`` uses adapter_linear."""

    dora = True

    def _forward(self, x):
        xd = self._dropped(x)
        A, B, m = self.lora_A.weight, self.lora_B.weight, self.lora_magnitude_vector
        if self.lean:
            y = adapter_linear(x, A, B, omega=self.omega, scale=self.scale, sine=self.sine,
                               base_weight=self.base_layer.weight, magnitude=m,
                               x_delta=None if xd is x else xd, fuse=self.fuse)
            return self._bias(y)
        # peft's DoRA (tuners/lora/dora.py): norm detached; keeps x W0ᵀ and the adapter output for backward.
        norm = self._row_norm().detach()
        base = F.linear(x, self.base_layer.weight)
        s = (m / norm).to(base.dtype)
        y = base + (s - 1) * base + s * self._adapter_out(xd)
        return self._bias(y)

    def _adapter_out(self, xd):
        return self._lora_out(xd)


class SineDoRALinear(DoRALinear):
    sine = True

    def _adapter_out(self, xd):
        return self._naive_sine_out(xd)


LAYERS = {"lora": LoRALinear, "dora": DoRALinear, "sine_lora": SineLoRALinear, "sine_dora": SineDoRALinear}
