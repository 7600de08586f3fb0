"""Load a compressed checkpoint as a model that runs the sine modules directly."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import InputError
from ..io.format import owned_tensors, read_layers
from ..io.hf_model import build_model, load_weights
from ..io.open import open_source
from ..nn.surgery import build_module, swap_module


def load(path: str | Path, model: nn.Module | None = None):
    """Load a compressed checkpoint.

    * an HF directory (``config.json``): returns the ``transformers`` model with each factorised
      ``nn.Linear`` replaced by its ``SineLowRankLinear`` / ``LowRankLinear``;
    * with ``model`` given: swaps the modules into that model and loads the remaining weights;
    * otherwise: returns a dict mapping tensor names to tensors and module names to sine modules.

    Outputs equal those of the inflated dense model (up to the dtype's rounding).
    """
    src = open_source(path)
    layers = read_layers(src)
    if model is None and src.config() is not None:
        model = build_model(src.side_dir())
    owned = owned_tensors(layers)
    modules = {}
    for name, rec in layers.items():
        bias = src.get(name + ".bias") if name + ".bias" in src.tensors else None
        modules[name] = build_module(rec, {k: src.get(t) for k, t in rec.tensor_names.items()}, bias)
    rest = {k: src.get(k) for k in src.tensors if k not in owned and k.rsplit(".", 1)[0] not in layers}
    if model is None:
        return {**rest, **modules}
    for name, mod in modules.items():
        try:
            old = swap_module(model, name, mod)
        except KeyError:
            raise InputError(f"{src.display}: layer {name!r} in the checkpoint is not a module of the model") from None
        dtype = next((p.dtype for p in old.parameters()), None)
        if dtype is not None:
            mod.to(dtype)
    load_weights(model, rest, src.display, provided=set(layers))
    return model.eval()
