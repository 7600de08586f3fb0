"""Triton kernels for the sine adapter on CUDA: the phase ω·B A never touches memory.

The lean sine adapter is memory-bound, not compute-bound: forming the fp32 phase, its sine and
cosine, and casting them costs several passes over an out×in matrix per layer and step, about as
much time as the adapter's extra matmuls. These kernels recompute the phase (r fused multiply-adds
per entry, r is small) in registers and write only the final half-precision tensor:

    unit_sine(Bw, A, out_dtype, W0=None, scale)  →  W0 + scale·sin(Bw A)   (or sin(Bw A))
    grad_phase(Bw, A, G, rs=None)                →  cos(Bw A) ⊙ G (⊙ rs per row), fp32

``Bw`` is B already multiplied by ω (fp32). Used only on CUDA when Triton imports.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # no Triton (CPU-only installs): the torch path is used
    HAVE_TRITON = False


def available(t: torch.Tensor) -> bool:
    return HAVE_TRITON and t.is_cuda


if HAVE_TRITON:

    @triton.jit
    def _phase_tile(B_ptr, A_ptr, rm, rn, M, N, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in tl.static_range(R):
            b = tl.load(B_ptr + rm * R + k, mask=rm < M, other=0.0)
            a = tl.load(A_ptr + k * N + rn, mask=rn < N, other=0.0)
            acc += b[:, None] * a[None, :]
        return acc

    @triton.jit
    def _unit_sine_kernel(B_ptr, A_ptr, W0_ptr, Out_ptr, M, N, scale, R: tl.constexpr, HAS_W0: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        s = tl.sin(_phase_tile(B_ptr, A_ptr, rm, rn, M, N, R, BLOCK_M, BLOCK_N))
        offs = rm[:, None] * N + rn[None, :]
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        if HAS_W0:
            s = tl.load(W0_ptr + offs, mask=mask, other=0.0).to(tl.float32) + scale * s
        tl.store(Out_ptr + offs, s.to(Out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_phase_kernel(B_ptr, A_ptr, G_ptr, RS_ptr, Out_ptr, M, N, R: tl.constexpr, HAS_RS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        c = tl.cos(_phase_tile(B_ptr, A_ptr, rm, rn, M, N, R, BLOCK_M, BLOCK_N))
        offs = rm[:, None] * N + rn[None, :]
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        g = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32) * c
        if HAS_RS:
            g = g * tl.load(RS_ptr + rm, mask=rm < M, other=0.0)[:, None]
        tl.store(Out_ptr + offs, g, mask=mask)


_BM, _BN = 32, 128


def _grid(M, N):
    return (triton.cdiv(M, _BM), triton.cdiv(N, _BN))


def unit_sine(Bw: torch.Tensor, A: torch.Tensor, out_dtype: torch.dtype, W0: torch.Tensor | None = None,
              scale: float = 1.0) -> torch.Tensor:
    Bw, A = Bw.float().contiguous(), A.float().contiguous()
    M, R = Bw.shape
    N = A.shape[1]
    out = torch.empty((M, N), dtype=out_dtype, device=A.device)
    w0 = W0.contiguous() if W0 is not None else out
    _unit_sine_kernel[_grid(M, N)](Bw, A, w0, out, M, N, float(scale), R=R, HAS_W0=W0 is not None,
                                   BLOCK_M=_BM, BLOCK_N=_BN)
    return out


def grad_phase(Bw: torch.Tensor, A: torch.Tensor, G: torch.Tensor, rs: torch.Tensor | None = None) -> torch.Tensor:
    Bw, A, G = Bw.float().contiguous(), A.float().contiguous(), G.contiguous()
    M, R = Bw.shape
    N = A.shape[1]
    out = torch.empty((M, N), dtype=torch.float32, device=A.device)
    r = rs.float().contiguous() if rs is not None else out
    _grad_phase_kernel[_grid(M, N)](Bw, A, G, r, out, M, N, R=R, HAS_RS=rs is not None, BLOCK_M=_BM, BLOCK_N=_BN)
    return out
