"""A model's stack of blocks, opened for block-by-block work: the skeleton (empty parameters), a way to
read any of its tensors, the calibration batches and what the first block receives.

Shared by the block-by-block fit (``blockwise.py``) and the block-by-block sensitivity pass
(``stack_sensitivity.py``): both hold the embeddings' outputs, one block and the activations, never the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..calib.blocks import block_inputs
from ..calib.data import CalibData
from ..config import CalibrationConfig
from ..errors import InputError
from ..io.hf_model import build_model, check_fits, checkpoint_names
from ..io.sources import Source
from ..nn.skeleton import empty_parameters, find_blocks, materialize_on_use, move_real, release
from .calibrate import calibration_data, check_token_ids
from .plan import LayerPlan


def skeleton(src: Source) -> tuple[nn.Module, str, nn.ModuleList, dict[str, str]]:
    """The model with empty parameters, its block stack (name, list) and model → checkpoint names."""
    check_fits(src)
    with empty_parameters():
        model = build_model(src.side_dir())
    stack, blocks = find_blocks(model)
    names = checkpoint_names(model, src.tensors)
    return model.eval(), stack, blocks, names


def fetcher(src: Source, names: dict[str, str]) -> Callable[[str], torch.Tensor]:
    def fetch(full: str) -> torch.Tensor:
        if full not in names:
            raise InputError(f"{src.display}: no tensor for {full!r}, which the model built from its config needs")
        return src.get(names[full])
    return fetch


@dataclass
class Stack:
    """An opened stack: ``inputs[j]`` is (hidden states, call keywords) of batch j at the first block."""

    model: nn.Module
    name: str
    blocks: nn.ModuleList
    fetch: Callable[[str], torch.Tensor]
    data: CalibData
    masks: list
    inputs: list[tuple[torch.Tensor, dict]]

    def split(self, layers: Iterable[LayerPlan]) -> tuple[dict[int, list[LayerPlan]], list[LayerPlan]]:
        """``layers`` by the index of the block holding them, and those outside the stack."""
        inside: dict[int, list[LayerPlan]] = {}
        outside = []
        for lp in layers:
            head, _, rest = lp.name.partition(self.name + ".")
            if head == "" and rest:
                inside.setdefault(int(rest.split(".")[0]), []).append(lp)
            else:
                outside.append(lp)
        return inside, outside


def open_stack(src: Source, cfg: CalibrationConfig, device: str) -> Stack:
    """Build the skeleton, read the calibration batches and run them up to the first block; everything
    read on the way (the embeddings) is released again."""
    # The calibration data first: a bad file fails before the model is built.
    data = calibration_data(src, cfg)
    model, stack, blocks, names = skeleton(src)
    fetch = fetcher(src, names)
    move_real(model, device)  # the buffers (rotary frequencies, position ids); parameters come on use
    hooks = materialize_on_use(model, fetch, stack + ".", device)
    try:
        check_token_ids(data, model, cfg.source or "the built-in text")
        inputs = block_inputs(model, blocks[0], data.batches, device)
    finally:
        for h in hooks:
            h.remove()
    release(model)  # the embeddings (and whatever else ran) are not needed again: the blocks are still empty
    return Stack(model, stack, blocks, fetch, data, [b.get("attention_mask") for b in data.batches], inputs)
