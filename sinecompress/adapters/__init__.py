"""Sine LoRA / sine DoRA adapters (and plain LoRA / DoRA baselines) for any ``nn.Module``."""

from __future__ import annotations

from .config import KINDS, PAPER_OMEGA_LLAMA, AdapterConfig, adapter_parameter_count
from .functional import adapter_linear, dense_delta
from .inject import (
    inject_adapters,
    iter_adapters,
    merge_adapters,
    remove_adapters,
    trainable_parameters,
    unmerge_adapters,
)
from .io import adapter_delta_weights, load_adapter, merge_checkpoint, read_adapter, save_adapter
from .layers import AdapterLinear, DoRALinear, LoRALinear, SineDoRALinear, SineLoRALinear

__all__ = [
    "KINDS", "PAPER_OMEGA_LLAMA", "AdapterConfig", "adapter_parameter_count", "adapter_linear", "dense_delta",
    "inject_adapters", "iter_adapters", "merge_adapters", "unmerge_adapters", "remove_adapters",
    "trainable_parameters", "save_adapter", "load_adapter", "read_adapter", "adapter_delta_weights",
    "merge_checkpoint", "AdapterLinear", "LoRALinear", "DoRALinear", "SineLoRALinear", "SineDoRALinear",
]
