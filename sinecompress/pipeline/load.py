"""Load a compressed checkpoint as a model that runs the sine modules directly."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import InputError
from ..io.format import owned_tensors, read_layers
from ..io.hf_model import build_model, check_fits, load_weights
from ..io.open import open_source
from ..nn.layers import SineLowRankLinear
from ..nn.surgery import build_module, replaceable, swap_module


def load(path: str | Path, model: nn.Module | None = None, cache_weights: bool = False):
    """Load a compressed checkpoint.

    * an HF directory (``config.json``): returns the ``transformers`` model with each factorised
      ``nn.Linear`` replaced by its ``SineLowRankLinear`` / ``LowRankLinear``, set up as transformers'
      ``from_pretrained`` sets it up after ``import sinecompress`` (``save_pretrained`` writes the
      compressed format);
    * with ``model`` given: swaps the modules into that model and loads the remaining weights;
    * otherwise: returns a dict mapping tensor names to tensors and module names to sine modules.

    Outputs equal those of the inflated dense model (up to the dtype's rounding). The modules' tensors
    carry the checkpoint's names, so ``state_dict()`` is the compressed layout. ``cache_weights``: build
    each sine layer's dense Ŵ once for inference (``SineLowRankLinear.cache_weight``).
    """
    src = open_source(path)
    layers = read_layers(src)
    if model is None and src.config() is not None:
        check_fits(src, compressed=set(layers))
        model = build_model(src.side_dir())
    owned = owned_tensors(layers)
    modules = {}
    for name, rec in layers.items():
        bias = src.get(name + ".bias") if name + ".bias" in src.tensors else None
        modules[name] = build_module(rec, {k: src.get(t) for k, t in rec.tensor_names.items()}, bias)
        if cache_weights and isinstance(modules[name], SineLowRankLinear):
            modules[name].cache_weight()
    rest = {k: src.get(k) for k in src.tensors if k not in owned and k.rsplit(".", 1)[0] not in layers}
    if model is None:
        return {**rest, **modules}
    for name, mod in modules.items():
        try:
            why = replaceable(model.get_submodule(name), layers[name])
        except AttributeError:
            raise InputError(f"{src.display}: layer {name!r} in the checkpoint is not a module of the model") from None
        if why:
            raise InputError(f"{src.display}: layer {name!r}: {why}")
        old = swap_module(model, name, mod)
        dtype = next((p.dtype for p in old.parameters()), None)
        if dtype is not None:
            mod.to(dtype)
    load_weights(model, rest, src.display, provided=set(layers))
    if layers:  # nothing compressed (every layer kept dense): a plain model, saved as one
        attach_hf(model)
    return model.eval()


def attach_hf(model: nn.Module) -> None:
    """A transformers model gets the quantizer ``from_pretrained`` would attach (when transformers supports
    it), so its ``save_pretrained`` writes the compressed format."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained") or not hasattr(model, "save_pretrained"):
        return
    from ..integrations.hf_quantizer import MIN_TRANSFORMERS, attach, transformers_version

    if transformers_version() >= MIN_TRANSFORMERS:
        attach(model)
