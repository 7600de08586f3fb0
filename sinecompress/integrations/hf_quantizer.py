"""transformers integration: ``from_pretrained`` builds the compressed layers of a sinecompress directory.

A compressed directory's ``config.json`` holds ``quantization_config = {"quant_method": "sinecompress",
"layers": {name: {kind, shape, dtype, rank, linear_rank, omega, amplitude}}}`` (format.hf_quantization_config).
transformers' loader looks ``quant_method`` up in its registry (``transformers/quantizers/auto.py``:
``AutoHfQuantizer.supports_quant_method``, ``AutoQuantizationConfig.from_dict``, ``AutoHfQuantizer.from_config``),
where ``register()`` adds ``SineCompressConfig`` and ``SineCompressHfQuantizer`` through the public
``register_quantization_config`` / ``register_quantizer``. While the model is still on the meta
device, ``from_pretrained`` calls ``HfQuantizer.preprocess_model`` → our ``_process_model_before_weight_loading``,
which swaps each listed ``nn.Linear`` for a ``CompressedSineLinear`` / ``CompressedLowRankLinear``
whose tensors carry the checkpoint's names, so the loader fills them by name like any other weight.
``save_pretrained`` calls ``get_state_dict_and_metadata`` (the state dict already is the compressed
layout; we add the safetensors metadata and refresh ``config.quantization_config``).

Without ``import sinecompress`` transformers only warns about the unknown quant_method and builds
dense layers; the zero-element ``<module>.weight`` placeholder in the checkpoint then stops the load
with a size-mismatch error (format.py), so a user never silently runs random weights.

This module imports transformers' quantizer machinery (seconds): ``integrations/hf_hook.py`` imports it only once
transformers itself has loaded that machinery.
"""

from __future__ import annotations

import torch
from safetensors import safe_open
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import InputError
from ..io.format import (
    FORMAT_VERSION,
    QUANT_METHOD,
    LayerRecord,
    hf_quantization_config,
    make_metadata,
    parse_record,
)
from ..io.hf_model import prefixed
from ..nn.layers import LowRankLinear, SineLowRankLinear
from ..nn.surgery import empty_module, replaceable, swap_module
from ..pipeline.save import checkpoint_state, layer_records

MIN_TRANSFORMERS = (4, 57)  # register_quantizer and get_state_dict_and_metadata (checked in their sources)


class SineCompressConfig(QuantizationConfigMixin):
    """``config.json``'s ``quantization_config`` of a sinecompress directory (see the module docstring)."""

    def __init__(self, layers: dict | None = None, format_version: int = FORMAT_VERSION,
                 tool_version: str | None = None, **_ignored):
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.tool_version = tool_version
        self.layers = dict(layers or {})
        self.post_init()

    def post_init(self):
        where = "config.json quantization_config"
        if self.format_version != FORMAT_VERSION:
            raise InputError(f"{where}: sinecompress format_version {self.format_version!r}; this sinecompress "
                             f"reads version {FORMAT_VERSION}: upgrade sinecompress (pip install -U sinecompress)")
        if not isinstance(self.layers, dict) or not self.layers:
            raise InputError(f"{where}: 'layers' must map module names to layer records; rewrite the directory "
                             "with `sinecompress factorize` or sinecompress.save")
        _ = self.records  # every layer record checked now, where a bad config.json is read

    @property
    def records(self) -> dict[str, LayerRecord]:
        """The layer records, checked by the format's one check (not stored: the config is saved as JSON)."""
        where = "config.json quantization_config"
        out = {}
        for name, rec in self.layers.items():
            try:
                out[name] = parse_record(name, rec)
            except ValueError as e:
                raise InputError(f"{where}: layer {name!r}: {e}") from None
        return out


class SineCompressHfQuantizer(HfQuantizer):
    """Loads (never makes) sinecompress checkpoints: compressing is ``sinecompress factorize``'s job."""

    requires_calibration = True  # transformers then refuses to "quantize" a dense model with this config
    quantization_config: SineCompressConfig

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        records = self.quantization_config.records
        check_checkpoint(checkpoint_files or [], records)
        replace_layers(model, records)
        return model

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        # transformers 4.x passes no checkpoint files to the hook above (5.x does), so the missing-factor
        # check happens here instead, on the keys the load found missing: the same one clear error.
        missing = {k.removeprefix(f"{prefix}.") for k in missing_keys}
        for rec in self.quantization_config.records.values():
            for key, tensor in rec.tensor_names.items():
                if tensor in missing or tensor.removeprefix(f"{prefix}.") in missing:
                    raise InputError(_factor_error(tensor, None, rec.shapes[key]))
        return missing_keys

    def _process_model_after_weight_loading(self, model, **kwargs):
        # The factors are ordinary float parameters: unlike integer-quantized weights they may be cast, so
        # .half()/.float() (refused for is_quantized models) stay allowed, as for a model from load().
        model.is_quantized = False
        return model

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # the factors are ordinary float parameters

    @property
    def is_qat_trainable(self) -> bool:
        return True  # lets transformers' Trainer fine-tune the factors without an adapter

    def get_state_dict_and_metadata(self, model, *args, **kwargs):
        """The state dict in the compressed layout (also for plain sine modules swapped in after loading)
        and the format's safetensors metadata; transformers then drops tied weights as usual."""
        records = layer_records(model)
        # Called before save_pretrained writes config.json: keep the config in step with the modules.
        model.config.quantization_config = SineCompressConfig(**hf_quantization_config(records))
        meta = make_metadata(records, None, f"save_pretrained({type(model).__name__})")
        return checkpoint_state(model, records, dedupe=False), {k: v for k, v in meta.items() if k != "format"}

    def _dequantize(self, model, dtype=None):
        """``model.dequantize()``: every compressed layer becomes an ``nn.Linear`` holding Ŵ (a transformers
        ``Conv1D`` holding Ŵᵀ where it replaced one, so the model saves as its class expects)."""
        for name, mod in list(model.named_modules()):
            if isinstance(mod, (SineLowRankLinear, LowRankLinear)):
                with torch.no_grad():
                    w = mod.dense_weight().detach()
                    if getattr(mod, "transposed", False):
                        from transformers.pytorch_utils import Conv1D

                        lin = Conv1D(mod.out_features, mod.in_features).to(device=w.device, dtype=dtype or w.dtype)
                        w = w.T
                    else:
                        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                        device=w.device, dtype=dtype or w.dtype)
                    lin.weight.copy_(w)
                    if mod.bias is not None:
                        lin.bias.copy_(mod.bias)
                swap_module(model, name, lin)
        return model


def replace_layers(model: nn.Module, layers: dict[str, LayerRecord]) -> None:
    """Swap each recorded ``nn.Linear`` of ``model`` (on any device, meta included) for its compressed module."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    modules = dict(model.named_modules())
    for name, rec in layers.items():
        # The checkpoint may come from a model with or without the base model's prefix (AutoModel vs ...ForX).
        path = next((p for p in prefixed(name, prefix) if p in modules), None)
        old = modules.get(path) if path is not None else None
        if isinstance(old, (SineLowRankLinear, LowRankLinear)):
            continue
        if old is None:
            raise InputError(f"config.json quantization_config: layer {name!r} is not in {type(model).__name__}; "
                             "load the directory with the model class it was compressed from")
        why = replaceable(old, rec)
        if why:
            raise InputError(f"config.json quantization_config: layer {name!r}: {why}")
        if tuple(old.weight.shape) != tuple(rec.stored_shape):
            raise InputError(f"config.json quantization_config: layer {name!r} is {list(rec.stored_shape)} but "
                             f"{type(model).__name__} has {list(old.weight.shape)}")
        new = empty_module(rec, old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
        swap_module(model, path, new)


def check_checkpoint(files: list, layers: dict[str, LayerRecord]) -> None:
    """Every factor the config lists is in the safetensors files with the shape the config implies.

    Caught here, a missing factor is one clear error instead of a randomly initialised tensor that
    transformers would only mention in its load report.
    """
    shapes = {}
    for f in files:
        if str(f).endswith(".safetensors"):
            with safe_open(str(f), "pt") as fh:
                shapes.update({k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
    if not shapes:
        return
    for rec in layers.values():
        for key, tensor in rec.tensor_names.items():
            want, got = rec.shapes[key], shapes.get(tensor)
            if got != want:
                raise InputError(_factor_error(tensor, got, want))


def _factor_error(tensor: str, got, want) -> str:
    return (f"{tensor}: {'missing from' if got is None else f'shape {list(got)} in'} the checkpoint, "
            f"config.json quantization_config implies {list(want)}; the compressed directory is incomplete or "
            "inconsistent")


def attach(model) -> None:
    """Make a transformers model holding compressed layers behave as ``from_pretrained`` left it.

    Sets ``config.quantization_config`` and ``hf_quantizer`` (so ``save_pretrained`` writes the
    compressed format) and, as ``_process_model_after_weight_loading`` leaves it, ``is_quantized`` False.
    """
    config = SineCompressConfig(**hf_quantization_config(layer_records(model)))
    model.config.quantization_config = config
    model.hf_quantizer = SineCompressHfQuantizer(config, pre_quantized=True)
    model.is_quantized = False
    model.quantization_method = QUANT_METHOD


def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def register() -> bool:
    """Add ``quant_method: sinecompress`` to transformers' registry; False on transformers too old for it."""
    if transformers_version() < MIN_TRANSFORMERS:
        return False
    from transformers.quantizers import auto

    if QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING:  # already registered (e.g. this module re-imported)
        return True
    auto.register_quantization_config(QUANT_METHOD)(SineCompressConfig)
    auto.register_quantizer(QUANT_METHOD)(SineCompressHfQuantizer)
    return True
