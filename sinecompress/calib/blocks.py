"""Calibration one block at a time: what the first block of a stack is given, and what a block's
layers see when it runs on given inputs.

``block_inputs`` runs the model on each batch only up to its first block (a forward pre-hook catches
the block's hidden states and call keywords - rotary embeddings, masks, positions - and stops the
forward, as GPTQ-style tools do), so the blocks themselves are never needed for it.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import InputError
from .capture import gram_hook, named_modules


class _Stop(Exception):
    """Ends a forward once the first block's inputs are caught."""


def to_device(obj, device: str):
    """Tensors inside ``obj`` (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def block_inputs(model: nn.Module, first: nn.Module, batches: list[dict], device: str = "cpu"):
    """For each batch: (the hidden states ``first`` receives, its other call keywords), on the CPU."""
    caught: list[tuple[torch.Tensor, dict]] = []

    names = _positional_names(first)

    def hook(_mod, args, kwargs):
        kw = dict(kwargs)
        if len(args) > len(names):
            raise InputError(f"{type(first).__name__} is called with {len(args)} positional arguments, more than "
                             "its forward names; use --finetune global")
        # BERT's encoder hands a block its attention mask by position: keep it, by name
        kw.update(zip(names[1:], args[1:]))
        x = args[0] if args else kw.pop("hidden_states")
        for k in ("cache", "past_key_values", "past_key_value", "layer_past"):
            kw.pop(k, None)  # no key/value cache while calibrating: every batch is a fresh sequence
        if "use_cache" in kw:
            kw["use_cache"] = False
        caught.append((x.detach().to("cpu", torch.float32), to_device(kw, "cpu")))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    model.eval()
    try:
        for b in batches:
            try:
                model(**to_device(b, device))
            except _Stop:
                continue
            except (TypeError, ValueError, RuntimeError, IndexError) as e:
                raise InputError(f"calibration inputs do not fit the model ({type(e).__name__}: {e})") from None
            raise InputError("the model's forward never reached its first block; use --finetune global")
    finally:
        handle.remove()
    return caught


def _positional_names(module: nn.Module) -> list[str]:
    """The names of ``module.forward``'s parameters that may be given by position."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD,)
    return [p.name for p in inspect.signature(module.forward).parameters.values() if p.kind in kinds]


#: A block runs on at most this many tokens at once (a whole number of rows, at least one): a 32×128 batch
#: through a 5632-wide MLP makes four 92 MiB intermediates, a piece of 1024 tokens four of 23 MiB.
PIECE_TOKENS = 1024


def row_slices(n: int, seq: int, tokens: int) -> list[slice]:
    """Slices of a batch of ``n`` rows of ``seq`` tokens, each at most ``tokens`` tokens (at least one row)."""
    rows = max(1, tokens // max(seq, 1))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def row_pieces(x: torch.Tensor, kw: dict, mask: torch.Tensor | None, tokens: int = PIECE_TOKENS):
    """(rows, x, keywords, mask) for ``x`` (batch, seq, …) split along its rows into pieces of at most
    ``tokens`` tokens. A keyword tensor is split with it when it has the batch's rows first (masks, positions,
    rotary tables of a padded batch); one with a single row or none (shared positions) goes whole."""
    n = x.shape[0]
    slices = row_slices(n, x.shape[1], tokens) if x.dim() > 2 else [slice(0, n)]
    if len(slices) == 1:
        yield slices[0], x, kw, mask
        return

    def cut(obj, s):
        if isinstance(obj, torch.Tensor):
            return obj[s] if obj.dim() >= 2 and obj.shape[0] == n else obj
        if isinstance(obj, (tuple, list)):
            return type(obj)(cut(o, s) for o in obj)
        if isinstance(obj, dict):
            return {k: cut(v, s) for k, v in obj.items()}
        return obj

    for s in slices:
        yield s, x[s], cut(kw, s), cut(mask, s)


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[tuple[torch.Tensor, dict]], device: str = "cpu",
              names: list[str] = (), masks: list[torch.Tensor | None] = (),
              tokens: int = PIECE_TOKENS) -> tuple[list[torch.Tensor], dict]:
    """Run ``block`` on every (hidden states, keywords); return its outputs (CPU, float32) and, for each
    module in ``names``, ``{"gram": XᵀX, "tokens": n}`` of what it saw over real tokens (``masks``).
    A batch runs ``tokens`` at a time (``row_pieces``): what the block makes inside does not grow with it."""
    mods = named_modules(block, list(names))
    stats = {n: {"gram": None, "tokens": 0} for n in names}
    current: dict = {"mask": None}
    handles = [mods[n].register_forward_pre_hook(gram_hook(stats, n, current)) for n in names]
    outs = []
    try:
        for i, (x, kw) in enumerate(inputs):
            out = None
            for s, xs, kws, ms in row_pieces(x, kw, masks[i] if i < len(masks) else None, tokens):
                current["mask"] = ms
                y = block_output(block(xs.to(device), **to_device(kws, device)))
                if out is None:
                    out = torch.empty((x.shape[0], *y.shape[1:]), dtype=torch.float32)
                out[s] = y.detach().to("cpu", torch.float32)
            outs.append(out)
    finally:
        for h in handles:
            h.remove()
    return outs, stats
