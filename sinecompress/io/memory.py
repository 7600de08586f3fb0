"""Sources held in memory: an ``nn.Module``'s state dict, or a timm model (``timm:NAME``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..dtypes import st_name
from ..errors import InputError, UsageError
from .sources import Source, TensorInfo


@dataclass
class MemorySource(Source):
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    module: nn.Module | None = field(default=None, repr=False)  # what the state belongs to (module_kinds)

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]

    def total_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


def module_source(model: nn.Module, display: str = "model") -> MemorySource:
    """A source over a module's state dict (tensors are shared, not copied)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = {}
    for k, v in state.items():
        tensors[k] = TensorInfo(k, tuple(v.shape), st_name(v.dtype), Path(display))
    return MemorySource(Path(display), "module", tensors, {}, display=display, state=state, module=model)


def timm_source(name: str) -> MemorySource:
    """``timm:NAME``: a timm model with its pretrained weights, from the local cache only (never downloads)."""
    import timm

    if name not in timm.list_models(pretrained=True) and name.split(".")[0] not in timm.list_models():
        raise UsageError(f"timm:{name}: unknown timm model; see timm.list_models()")
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at call time: the cache or nothing, no network retries
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # timm/hub raise many error types for a cache miss
        raise InputError(f"timm:{name}: pretrained weights are not in the local cache and nothing is downloaded "
                         f"at run time ({type(e).__name__}); save the model with "
                         "safetensors.torch.save_model(model, 'model.safetensors') and pass that file") from None
    finally:
        constants.HF_HUB_OFFLINE = offline
    return module_source(model, f"timm:{name}")
