"""Module surgery: building a compressed layer from its factors, putting it into a model, reading it back."""

from __future__ import annotations

import torch
from torch import nn

from ..dtypes import TO_TORCH
from ..io.format import LayerRecord
from ..io.hf_model import CONV1D, LINEAR, module_kind
from .checkpoint_layers import CompressedLowRankLinear, CompressedSineLinear
from .layers import LowRankLinear


def replaceable(module: nn.Module, rec: LayerRecord) -> str | None:
    """Why a compressed layer cannot take ``module``'s place (None if it can): it replaces an
    ``nn.Linear``, or a transformers ``Conv1D`` when the record says the weight was stored transposed."""
    kind = module_kind(module)
    if rec.transposed:
        return None if kind == CONV1D else f"the record is of a Conv1D layer but the model has a module of class {kind} there"
    if kind == LINEAR:
        return None
    if kind == CONV1D:
        return ("the model has a Conv1D (weight stored in×out) but the record has no 'transposed' flag, so it was "
                "written by an earlier sinecompress that mishandled Conv1D; compress the model again")
    return f"the model has a module of class {kind} there, not a linear layer"


def swap_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule ``name`` is; return the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
    except AttributeError:
        old = None
    if not isinstance(old, nn.Module):
        raise KeyError(f"layer {name!r} is not a module of the model")
    setattr(parent, child, new)
    return old


def empty_module(rec: LayerRecord, bias: bool, device=None, dtype: torch.dtype | None = None) -> nn.Module:
    """The module ``rec`` describes, factors not yet set; its tensors carry the checkpoint's names
    (``checkpoint_layers.py``), so its ``state_dict()`` is the compressed format."""
    m, n = rec.shape
    kw = {"device": device, "dtype": dtype or TO_TORCH[rec.dtype]}
    if rec.kind == "lowrank":
        mod = CompressedLowRankLinear(n, m, rec.rank, bias=bias, **kw)
    else:
        mod = CompressedSineLinear(n, m, rec.rank, rec.omega, bias=bias, amplitude=rec.amplitude or "row",
                                   linear_rank=rec.linear_rank, **kw)
    mod.transposed = rec.transposed  # it replaces a Conv1D: saved records and dense copies keep that layout
    return mod


def build_module(rec: LayerRecord, factors: dict[str, torch.Tensor], bias: torch.Tensor | None = None,
                 dtype: torch.dtype | None = None) -> nn.Module:
    """The compressed layer ``rec`` describes, holding ``factors`` (by factor key) and ``bias``, in ``dtype``
    (default: the record's)."""
    mod = empty_module(rec, bias is not None, dtype=dtype)
    if rec.kind == "lowrank":
        with torch.no_grad():
            mod.u.copy_(factors["u"])
            mod.v.copy_(factors["v"])
    else:
        mod.load_factors(factors)
    if bias is not None:
        with torch.no_grad():
            mod.bias.copy_(bias)
    return mod


def factors_of(mod: nn.Module) -> dict:
    """Read the (tuned) factors back out of a compressed module, detached, float32, on the CPU."""
    if isinstance(mod, LowRankLinear):
        f = {"u": mod.u, "v": mod.v}
    else:
        f = {"u": mod.u, "v": mod.v, "amp": mod.amp, "lin_u": mod.lin_u, "lin_v": mod.lin_v}
    f = {k: (t.detach().float().cpu().clone() if t is not None else None) for k, t in f.items()}
    f["bias"] = mod.bias.detach().float().cpu().clone() if mod.bias is not None else None
    return f
