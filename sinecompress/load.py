"""Load a compressed checkpoint as a model that runs the sine modules directly."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import InputError
from .format import build_module, factor_names
from .inflate import compressed_layers
from .sources import open_source


def load(path: str | Path, model: nn.Module | None = None):
    """Load a compressed checkpoint.

    * an HF directory (``config.json``): returns the ``transformers`` model with each factorised
      ``nn.Linear`` replaced by its ``SineLowRankLinear`` / ``LowRankLinear``;
    * with ``model`` given: swaps the modules into that model and loads the remaining weights;
    * otherwise: returns a dict mapping tensor names to tensors and module names to sine modules.

    Outputs equal those of the inflated dense model (up to the dtype's rounding).
    """
    src = open_source(path)
    layers = compressed_layers(src)
    if model is None and src.config() is not None:
        model = _hf_model_from_config(src.model_dir)
    factor_owned = {f for name, rec in layers.items() for f in factor_names(name, rec["kind"], rec.get("linear_rank", 0))}
    modules = {}
    for name, rec in layers.items():
        bias_name = name + ".bias"
        bias = src.get(bias_name) if bias_name in src.tensors else None
        modules[name] = build_module(rec, src.get, bias)
    if model is None:
        plain = {k: src.get(k) for k in src.tensors if k not in factor_owned}
        for name in layers:
            plain.pop(name + ".bias", None)
        return {**plain, **modules}
    for name, mod in modules.items():
        _swap(model, name, mod)
    rest = {k: src.get(k) for k in src.tensors if k not in factor_owned and k.rsplit(".", 1)[0] not in layers}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in layers]
    buffers = dict(model.named_buffers())
    for k in [k for k in unexpected if k in buffers]:  # old checkpoints store now non-persistent buffers
        if buffers[k].shape == rest[k].shape:
            buffers[k].copy_(rest[k])
            unexpected.remove(k)
    if unexpected:
        raise InputError(f"{src.display}: tensors not in the model, e.g. {unexpected[0]!r}")
    if missing:
        # HF models hold buffers (position ids) that checkpoints omit; only parameters must be present.
        params = dict(model.named_parameters())
        missing = [k for k in missing if k in params]
        if missing:
            raise InputError(f"{src.display}: the model expects {missing[0]!r}, which the checkpoint lacks")
    return model.eval()


def _hf_model_from_config(model_dir: Path) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        return transformers.AutoModel.from_config(config)
    # Not on the meta device: non-persistent buffers (position ids) must be really initialised.
    return cls(config)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child, None)
    if not isinstance(old, nn.Module):
        raise InputError(f"layer {name!r} in the checkpoint is not a module of the model")
    setattr(parent, child, new.to(next(old.parameters()).dtype) if any(True for _ in old.parameters()) else new)
