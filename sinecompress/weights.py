"""How factors make a weight, and what they cost: the maths every layer shares.

A sine layer's weight is ``Ŵ = L_u L_vᵀ + a ⊙ sin(ω · U Vᵀ)``; a low-rank layer's is ``U Vᵀ``. ``rank``
always means the total factor rank (the linear part included).
"""

from __future__ import annotations

import torch

KINDS = ("sine", "lowrank")


def sine_weight(u, v, omega, amp, lin_u=None, lin_v=None, dtype=None):
    """Materialise ``lin_u lin_vᵀ + amp ⊙ sin(omega · u vᵀ)`` with an fp32 phase.

    At phase ~100 a bfloat16 rounding error is about one whole period, so the phase is always
    formed in float32, with autocast off.
    """
    out_dtype = dtype or u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        phase = u.float() @ v.float().T
        w = torch.sin(phase.mul_(omega))
        a = amp.float()
        w = w * (a[:, None] if a.dim() == 1 and a.numel() > 1 else a.reshape(()))
        if lin_u is not None and lin_u.shape[1] > 0:
            w = w + lin_u.float() @ lin_v.float().T
    return w.to(out_dtype)


def factor_params(m: int, n: int, rank: int, kind: str, amplitude: str | None = "row") -> int:
    """Parameters of a rank-``rank`` factorisation of an m×n weight; a sine layer's learned amplitude
    (one per row, or one scalar) counts too. ``amplitude=None``: fixed, not a parameter."""
    amp = 0 if kind != "sine" or amplitude is None else (m if amplitude == "row" else 1)
    return rank * (m + n) + amp


def break_even(m: int, n: int) -> int:
    """The rank at which a rank-k factorisation stops saving parameters: k(m+n) ≥ mn."""
    return m * n // (m + n)
