"""Write a live model that holds compressed layers back in the compressed checkpoint format (format.py).

Works for a model from ``load()``, from transformers' ``from_pretrained`` after ``import sinecompress``,
from ``compress_()``, or any model holding ``SineLowRankLinear`` / ``LowRankLinear`` modules. The
factors are written exactly as held (same dtype, same bytes), so ``load(save(model))`` reproduces it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..config import parse_size
from ..dtypes import st_name
from ..errors import UsageError
from ..io.atomic import atomic_output
from ..io.format import PLACEHOLDER, SUFFIXES, LayerRecord, hf_quantization_config, make_metadata
from ..io.model_dir import not_a_model_output
from ..io.shards import write_weights
from ..io.writer import Entry, write_safetensors
from ..nn.layers import LowRankLinear, SineLowRankLinear
from ..version import __version__


def layer_records(model: nn.Module) -> dict[str, LayerRecord]:
    """The format's record of every compressed layer of ``model``, from the modules themselves."""
    out = {}
    for name, mod in model.named_modules():
        shape = (mod.out_features, mod.in_features) if isinstance(mod, (SineLowRankLinear, LowRankLinear)) else None
        if isinstance(mod, SineLowRankLinear):
            out[name] = LayerRecord(name, "sine", shape, st_name(mod.u.dtype), mod.rank, mod.linear_rank,
                                    mod.omega, mod.amplitude, method="sine", transposed=getattr(mod, "transposed", False))
        elif isinstance(mod, LowRankLinear):
            out[name] = LayerRecord(name, "lowrank", shape, st_name(mod.u.dtype), mod.rank, method="svd",
                                    transposed=getattr(mod, "transposed", False))
    return out


def checkpoint_state(model: nn.Module, records: dict[str, LayerRecord] | None = None,
                     dedupe: bool = True) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the compressed checkpoint's names; with ``dedupe`` tied (shared) tensors once."""
    records = layer_records(model) if records is None else records
    renames = {}
    for name, rec in records.items():
        renames.update({f"{name}.{a}": f"{name}.{s}" for a, s in SUFFIXES[rec.kind].items()})
    state, seen = {}, set()
    for key, t in model.state_dict().items():
        key = renames.get(key, key)
        module = key.rpartition(".")[0]
        if module in records and f"{module}.{PLACEHOLDER}" not in state:
            # Plain SineLowRankLinear / LowRankLinear modules hold no placeholder: add it before their factors.
            state[f"{module}.{PLACEHOLDER}"] = torch.empty(0, dtype=t.dtype)
            if key == f"{module}.{PLACEHOLDER}":
                continue
        if dedupe and t.numel() > 0 and t.device.type != "meta":
            ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if ident in seen:  # a tied weight (e.g. lm_head = embeddings): stored once, tied again on load
                continue
            seen.add(ident)
        state[key] = t.detach()
    return state


def save(model: nn.Module, out: str | Path, *, overwrite: bool = False,
         max_shard_size: str | int | None = None) -> Path:
    """Write ``model`` in the compressed format; return ``out``.

    A transformers model gives a directory (``config.json`` with the ``quantization_config`` that
    ``from_pretrained`` needs, ``generation_config.json`` when it has one, ``model.safetensors``);
    any other module gives one ``.safetensors`` file. ``max_shard_size`` (e.g. ``"2GB"``) shards a
    directory's weights as ``factorize --max-shard-size`` does. Tokenizer files are not part of the model:
    copy them from the source directory. Written under a temporary name, then renamed.
    """
    records = layer_records(model)
    if not records:
        raise UsageError(f"{type(model).__name__} holds no SineLowRankLinear or LowRankLinear layer; "
                         "there is nothing to save in the compressed format (use save_pretrained or safetensors)")
    out = Path(out)
    shard_bytes = parse_size(max_shard_size) if max_shard_size is not None else None
    state = checkpoint_state(model, records)
    entries = [Entry(k, st_name(t.dtype), tuple(t.shape), lambda t=t: t) for k, t in state.items()]
    meta = make_metadata(records, None, f"sinecompress.save({type(model).__name__})",
                         {"saved_by": f"sinecompress {__version__}"})
    config = getattr(model, "config", None)
    as_file = config is None or not hasattr(config, "save_pretrained")
    if as_file and shard_bytes is not None:
        raise UsageError("max_shard_size: a model without a transformers config is saved as one file; drop it")
    with atomic_output(out, overwrite, kind="file" if as_file else "dir", replaceable=not_a_model_output) as tmp:
        if as_file:
            write_safetensors(tmp, entries, meta)
            return out
        tmp.mkdir()
        config = copy.deepcopy(config)
        config.quantization_config = hf_quantization_config(records)
        config.architectures = [type(model).__name__]
        config.save_pretrained(str(tmp))
        gen = getattr(model, "generation_config", None)
        if gen is not None and getattr(model, "can_generate", lambda: False)():
            gen.save_pretrained(str(tmp))
        write_weights(tmp, entries, meta, shard_bytes)
    return out
