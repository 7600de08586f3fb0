"""A model skeleton whose parameters take no memory until they are needed, filled part by part.

``empty_parameters`` builds a module with every parameter on the meta device while buffers stay
real (rotary frequencies, position ids are computed in ``__init__`` and are not in checkpoints);
``materialize`` then gives one submodule (the embeddings, one block) real parameters read from a
checkpoint, and ``release`` puts them back on the meta device. So a model of any depth costs the
embeddings, one block and the activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..errors import InputError


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """While active, every parameter a module registers is created on the meta device."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def materialize(module: nn.Module, prefix: str, fetch: Callable[[str], torch.Tensor],
                dtype: torch.dtype = torch.float32, device: str = "cpu", skip: str | None = None) -> None:
    """Give ``module``'s empty parameters real storage, ``fetch(full name)`` (``prefix`` + the name inside
    ``module``) in ``dtype``; parameters under ``skip`` (a full-name prefix) stay empty. Tied parameters
    (one Parameter under two names) are read once."""
    seen: dict[int, torch.Tensor] = {}
    for sub_name, sub in module.named_modules():
        for pname, p in list(sub._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            full = ".".join(x for x in (prefix, sub_name, pname) if x)
            if skip is not None and full.startswith(skip):
                continue
            if id(p) in seen:
                sub._parameters[pname] = seen[id(p)]
                continue
            t = fetch(full)
            if tuple(t.shape) != tuple(p.shape):
                raise InputError(f"tensor {full!r} is {list(t.shape)} in the checkpoint, the model expects {list(p.shape)}")
            new = nn.Parameter(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype),
                               requires_grad=False)
            seen[id(p)] = new
            sub._parameters[pname] = new


def materialize_on_use(model: nn.Module, fetch: Callable[[str], torch.Tensor], skip: str, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> list:
    """Give each module outside ``skip`` its parameters just before it first runs (a forward pre-hook),
    so what a forward never reaches (an LM head after the blocks) is never read. Returns the hook
    handles (remove them when done)."""
    handles = []
    for name, mod in model.named_modules():
        if name.startswith(skip) or not any(p.device.type == "meta" for p in mod.parameters(recurse=False)):
            continue

        def fill(m, _args, name=name):
            for pname, p in list(m._parameters.items()):
                if p is not None and p.device.type == "meta":
                    t = fetch(f"{name}.{pname}" if name else pname)
                    m._parameters[pname] = nn.Parameter(
                        t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype), requires_grad=False)

        handles.append(mod.register_forward_pre_hook(fill))
    return handles


def move_real(module: nn.Module, device: str) -> None:
    """Move the parameters and buffers that have storage to ``device``; empty ones stay on meta."""
    moved: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for pname, p in list(sub._parameters.items()):
            if p is not None and p.device.type != "meta":
                if id(p) not in moved:
                    moved[id(p)] = nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
                sub._parameters[pname] = moved[id(p)]
        for bname, b in list(sub._buffers.items()):
            if b is not None and b.device.type != "meta":
                sub._buffers[bname] = b.to(device)


def release(module: nn.Module) -> None:
    """Drop ``module``'s parameter storage (back to the meta device)."""
    for sub in module.modules():
        for pname, p in list(sub._parameters.items()):
            if p is not None and p.device.type != "meta":
                sub._parameters[pname] = nn.Parameter(p.detach().to("meta"), requires_grad=False)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of blocks: the longest ``nn.ModuleList`` whose children all share one class
    (Llama/Mistral/Qwen2 ``model.layers``, GPT-2 ``transformer.h``, BERT ``encoder.layer``)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(c) for c in mod}) == 1:
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise InputError(f"{type(model).__name__} has no stack of identical blocks (an nn.ModuleList) to "
                         "compress block by block; use --finetune global")
    return best
