"""`sinecompress spectrum`: rank of sin(ω·U Vᵀ) against ω (the paper's Figure 3 right, Theorem 1).

The factors U (m×k), V (n×k) come from one of:

* a random draw, initialised like ``SineLowRankLinear`` (Kaiming uniform, as the paper);
* a compressed layer of a checkpoint: its own sine factors (or low-rank factors);
* a dense layer of a checkpoint: the balanced truncated-SVD factors of W at rank k.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..config import OMEGA_RANGE
from ..errors import UsageError
from ..fit.svd import truncated_svd
from ..io.format import read_layers, read_metadata
from ..io.open import open_source
from ..nn.layers import SineLowRankLinear
from ..version import __version__
from .spectra import DEFAULT_TOP, EPS, singular_values

SCHEMA_VERSION = 1
DEFAULT_OMEGAS = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
SWEEP_KEYS = ("schema_version", "tool_version", "source", "layer", "factors", "shape", "rank", "seed",
              "layer_omega", "tolerance", "uv", "omegas")
POINT_KEYS = ("omega", "numerical_rank", "numerical_rank_is_lower_bound", "effective_rank", "stable_rank",
              "singular_values")


MAX_SWEEP_ENTRIES = 64 * 2**20  # a random U Vᵀ of this many float32 entries is 256 MiB, and each SVD costs more


def parse_shape(text: str) -> tuple[int, int]:
    try:
        m, n = (int(x) for x in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UsageError(f"--shape {text!r}: expected MxN, e.g. 256x256") from None
    if m < 1 or n < 1:
        raise UsageError(f"--shape {text!r}: both sides must be positive")
    if m * n > MAX_SWEEP_ENTRIES:
        raise UsageError(f"--shape {text!r}: {m * n:,} entries is more than this sweep handles "
                         f"({MAX_SWEEP_ENTRIES:,}); pick a smaller shape, or a checkpoint layer with --layer")
    return m, n


def parse_omegas(text: str) -> list[float]:
    try:
        omegas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--omegas {text!r}: expected comma-separated numbers, e.g. 1,10,100,1000") from None
    if not omegas or any(not (math.isfinite(w) and OMEGA_RANGE[0] <= w <= OMEGA_RANGE[1]) for w in omegas):
        raise UsageError(f"--omegas {text!r}: every ω must be a number from {OMEGA_RANGE[0]:g} to {OMEGA_RANGE[1]:g}")
    return omegas


def random_factors(m: int, n: int, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """U (m×k), V (n×k) drawn as ``SineLowRankLinear`` initialises them (Kaiming uniform)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = SineLowRankLinear(n, m, rank, 1.0, bias=False)
    return layer.u.detach(), layer.v.detach()


def checkpoint_factors(source: str | Path, layer: str, rank: int) -> dict:
    """Factors of one layer of a checkpoint (see the module docstring for which)."""
    src = open_source(source)
    recs = read_layers(src) if read_metadata(src.metadata, src.display) is not None else {}
    if layer in recs:
        rec = recs[layer]
        names = rec.tensor_names
        u, v = src.get(names["u"]).float(), src.get(names["v"]).float()
        return {"u": u, "v": v, "source": src.display, "factors": f"{rec.kind} factors of the checkpoint",
                "layer_omega": rec.omega}
    key = layer + ".weight"
    if key not in src.tensors or len(src.tensors[key].shape) != 2:
        known = sorted(recs) or [k[:-7] for k, t in src.tensors.items() if k.endswith(".weight") and len(t.shape) == 2]
        hint = ", ".join(known[:3]) + (", ..." if len(known) > 3 else "")
        raise UsageError(f"--layer {layer!r}: no such 2-D layer in {src.display} (module names such as {hint})")
    w = src.get(key).float()
    if rank > min(w.shape):
        raise UsageError(f"--rank {rank} exceeds the smaller side of {layer} {list(w.shape)}")
    u, v = truncated_svd(w, rank)
    return {"u": u, "v": v, "source": src.display, "factors": f"truncated SVD of W at rank {rank}",
            "layer_omega": None}


def omega_sweep(shape: tuple[int, int] | None = None, rank: int = 5, omegas=DEFAULT_OMEGAS, seed: int = 0,
                source: str | Path | None = None, layer: str | None = None, rtol: float | None = None,
                exact: bool = False, top: int = DEFAULT_TOP) -> dict:
    """Numerical, effective and stable rank of U Vᵀ and of sin(ω·U Vᵀ) for each ω (schema in docs/report.md)."""
    if rank < 1:
        raise UsageError(f"--rank must be a positive integer, got {rank}")
    if rtol is not None and not (0 < rtol < 1):
        raise UsageError(f"--rtol must be between 0 and 1, got {rtol}")
    omegas = [float(w) for w in omegas]
    if not omegas or any(not (math.isfinite(w) and w > 0) for w in omegas):
        raise UsageError("every ω must be a positive finite number")
    if source is None and layer is not None:
        raise UsageError(f"--layer {layer!r} needs a checkpoint: sinecompress spectrum CKPT --layer NAME")
    if source is not None:
        if layer is None:
            raise UsageError("spectrum on a checkpoint needs --layer NAME (a module name)")
        f = checkpoint_factors(source, layer, rank)
    else:
        if shape is None:
            raise UsageError("give --shape MxN (random factors) or a checkpoint with --layer NAME")
        m, n = shape
        if rank > min(m, n):
            raise UsageError(f"--rank {rank} exceeds the smaller side of {m}x{n}")
        u, v = random_factors(m, n, rank, seed)
        f = {"u": u, "v": v, "source": "random", "factors": "random, Kaiming uniform (as SineLowRankLinear)",
             "layer_omega": None}
    phase = f["u"] @ f["v"].T
    ex = exact or None
    uv = singular_values(phase, exact=ex, top=top)
    points = []
    for w in sorted(omegas):
        s = singular_values(torch.sin(phase * w), exact=ex, top=top).summary(rtol)
        points.append({"omega": w, **{k: s[k] for k in POINT_KEYS if k != "omega"}})
    uv_sum = uv.summary(rtol)
    return {
        "schema_version": SCHEMA_VERSION, "tool_version": __version__, "source": f["source"], "layer": layer,
        "factors": f["factors"], "shape": list(phase.shape), "rank": int(f["u"].shape[1]),
        "seed": seed if source is None else None, "layer_omega": f["layer_omega"],
        "tolerance": (f"sigma_i > {rtol:g} * sigma_max" if rtol is not None
                      else f"sigma_i > max(m, n) * {EPS:.3g} * sigma_max"),
        "uv": {k: uv_sum[k] for k in POINT_KEYS if k != "omega"},
        "omegas": points,
    }
