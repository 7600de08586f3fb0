"""Memory-lean autograd for (sine) LoRA / DoRA layers.

``adapter_linear`` computes, for a frozen base weight W0 (out×in), adapter factors A (r×in) and
B (out×r), and an optional DoRA magnitude m (out,):

    ΔW = c · sin(ω · B A)        (sine)      or      ΔW = c · B A      (linear)
    y  = s ⊙ (x W0ᵀ + x_d ΔWᵀ),  s = m / ‖W0 + ΔW‖_row  (DoRA; s = 1 without m)

``x_d`` is the adapter's input (``x`` after dropout; ``x`` itself when there is no dropout).

Autograd through the dense ΔW would keep the m×n phase and sin(phase) alive until backward: that is
what makes the official sine-LoRA code cost 72 GB against LoRA's 55 GB on Llama-3-8B. This function
saves only x (and x_d when it differs), A, B, m and the row norms, and rebuilds sin/cos of the phase
in backward. The phase is always formed in at least float32: in bfloat16 at phase ~100 the rounding
error is about one whole period.

As in DoRA (Liu et al. 2024, §4.3) the row norm ‖W0 + ΔW‖ is treated as a constant in backward: it
follows ΔW in the forward pass but gets no gradient, so nothing dense is saved for it.
"""

from __future__ import annotations

import torch


def _phase_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def dense_delta(A, B, omega: float, scale: float, sine: bool) -> torch.Tensor:
    """ΔW = c·sin(ω·B A) or c·B A, formed in (at least) float32; no autograd bookkeeping needed."""
    pd = _phase_dtype(A)
    with torch.autocast(device_type=A.device.type, enabled=False):
        w = B.to(pd) @ A.to(pd)
        if sine:
            w = w.mul_(omega).sin_()
        return w.mul_(scale)


def _unit_delta(A, B, omega: float, sine: bool, cd: torch.dtype, keep_phase: bool = False):
    """sin(ω·B A) (or B A) in the compute dtype ``cd``, phase in fp32; optionally also the fp32 phase.

    ω is folded into the r×out factor and the scale c is left to the caller's matmul (addmm's alpha),
    so the m×n data is written once in fp32 and once in ``cd``: this function is memory-bound, and
    each extra elementwise pass over m×n costs about as much as the adapter's matmuls.
    """
    pd = _phase_dtype(A)
    phase = (B.to(pd) * omega if sine else B.to(pd)) @ A.to(pd)
    if not sine:
        return (phase if cd == pd else phase.to(cd)), (phase if keep_phase else None)
    if cd == pd and not keep_phase:
        return phase.sin_(), None
    s = torch.empty(phase.shape, dtype=cd, device=phase.device)
    torch.sin(phase, out=s)
    return s, (phase if keep_phase else None)


class _AdapterLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_delta, A, B, W0, magnitude, omega, scale, sine, fuse):
        cd = _compute_dtype(x)
        pd = _phase_dtype(A)
        ctx.omega, ctx.scale, ctx.sine, ctx.cd = omega, scale, sine, cd
        with torch.autocast(device_type=x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(cd)
            xd2 = x2 if x_delta is None else x_delta.reshape(-1, x_delta.shape[-1]).to(cd)
            norm = rs = None
            if magnitude is not None:
                # DoRA: the row norm needs W0 + ΔW in fp32; it is a constant for backward (see docstring).
                full = dense_delta(A, B, omega, scale, sine).add_(W0.to(pd))
                norm = torch.linalg.vector_norm(full, dim=1)
                rs = magnitude.to(pd) / norm
                if fuse and x_delta is None:
                    y = x2 @ full.mul_(rs[:, None]).to(cd).T
                else:
                    del full
                    s, _ = _unit_delta(A, B, omega, sine, cd)
                    y = torch.addmm(x2 @ W0.to(cd).T, xd2, s.T, alpha=scale).mul_(rs.to(cd))
            else:
                s, _ = _unit_delta(A, B, omega, sine, cd)
                if W0 is None:
                    y = (xd2 @ s.T).mul_(scale)
                elif fuse and x_delta is None:
                    y = x2 @ torch.add(W0.to(cd), s, alpha=scale).T
                else:
                    y = torch.addmm(x2 @ W0.to(cd).T, xd2, s.T, alpha=scale)
        ctx.save_for_backward(x, x_delta, A, B, W0, magnitude, norm)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, g):
        x, x_delta, A, B, W0, magnitude, norm = ctx.saved_tensors
        omega, scale, sine, cd = ctx.omega, ctx.scale, ctx.sine, ctx.cd
        need_x, need_xd, need_A, need_B, _, need_m = ctx.needs_input_grad[:6]
        pd = _phase_dtype(A)
        with torch.autocast(device_type=g.device.type, enabled=False):
            # Rebuild the phase here instead of keeping sin/cos of it since forward.
            s, phase = _unit_delta(A, B, omega, sine, cd, keep_phase=need_A or need_B)
            rs = None if magnitude is None else magnitude.to(pd) / norm
            same_x = x_delta is None
            xd = x if same_x else x_delta
            g2 = g.reshape(-1, g.shape[-1]).to(cd)
            gs = g2 if rs is None else g2 * rs.to(cd)
            grad_x = grad_xd = grad_A = grad_B = grad_m = None
            if need_x or need_xd:
                if same_x:
                    w = s * scale if W0 is None else torch.add(W0.to(cd), s, alpha=scale)
                    grad_x = (gs @ w).reshape(x.shape).to(x.dtype)
                    del w
                else:
                    if need_x and W0 is not None:
                        grad_x = (gs @ W0.to(cd)).reshape(x.shape).to(x.dtype)
                    if need_xd:
                        grad_xd = (gs @ s).mul_(scale).reshape(xd.shape).to(xd.dtype)
            if need_A or need_B or need_m:
                xd2 = xd.reshape(-1, xd.shape[-1]).to(cd)
                G = g2.T @ xd2  # ∂L/∂(x_d ΔWᵀ) summed over tokens: the one dense product backward needs
                if need_m:
                    grad_rs = (G.to(pd) * s.to(pd)).sum(1).mul_(scale)
                    if W0 is not None:
                        if same_x:
                            grad_rs += (G.to(pd) * W0.to(pd)).sum(1)
                        else:
                            x2 = x.reshape(-1, x.shape[-1]).to(cd)
                            grad_rs += ((g2.T @ x2).to(pd) * W0.to(pd)).sum(1)
                    grad_m = (grad_rs / norm).to(magnitude.dtype)
                if need_A or need_B:
                    del s
                    # ∂L/∂phase = c·ω·cos(phase) ⊙ G (⊙ DoRA's row scale); constants go on the r-sized results.
                    gp = phase.cos_().mul_(G) if sine else G.to(pd)
                    if rs is not None:
                        gp.mul_(rs[:, None])
                    k = scale * omega if sine else scale
                    if need_B:
                        grad_B = (gp @ A.to(pd).T).mul_(k).to(B.dtype)
                    if need_A:
                        grad_A = (B.to(pd).T @ gp).mul_(k).to(A.dtype)
        return grad_x, grad_xd, grad_A, grad_B, None, grad_m, None, None, None, None


def adapter_linear(x, A, B, *, omega: float = 1.0, scale: float = 1.0, sine: bool = True,
                   base_weight=None, magnitude=None, x_delta=None, fuse: bool | None = None):
    """``s ⊙ (x W0ᵀ + x_d ΔWᵀ)`` (no bias) with memory-lean backward; see the module docstring.

    ``base_weight`` is frozen: it never receives a gradient. ``magnitude`` (DoRA) needs
    ``base_weight``. ``fuse`` forms W0 + ΔW once and does one matmul instead of two; the default
    fuses only in float32/float64, because rounding W0 + ΔW to bfloat16 per weight would swallow a
    small ΔW in the forward pass (the gradient is unaffected: backward always uses the fused weight).
    """
    if magnitude is not None and base_weight is None:
        raise ValueError("a DoRA magnitude needs the base weight")
    if fuse is None:
        fuse = _compute_dtype(x) in (torch.float32, torch.float64)
    return _AdapterLinear.apply(x, x_delta, A, B, base_weight, magnitude, float(omega), float(scale),
                                bool(sine), bool(fuse))
