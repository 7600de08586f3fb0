"""Inflate a compressed checkpoint back to plain dense weights that stock tools load."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import parse_size
from ..errors import UsageError
from ..io.format import LayerRecord, dense_from_factors, owned_tensors, read_layers, read_metadata
from ..io.model_dir import write_like_source
from ..io.open import open_source
from ..io.sources import Source
from ..io.writer import Entry
from ..version import __version__
from .card import dense_card


def dense_entries(src: Source, layers: dict[str, LayerRecord]) -> list[Entry]:
    """Every tensor of ``src`` in order, each layer's factors replaced by its dense weight."""
    owned = owned_tensors(layers)
    entries, done = [], set()
    for name, info in src.tensors.items():
        layer = owned.get(name)
        if layer is None:
            entries.append(Entry(name, info.dtype, info.shape, lambda n=name: src.get(n)))
        elif layer not in done:  # the dense weight takes the place of the layer's first factor
            done.add(layer)
            rec = layers[layer]
            entries.append(Entry(layer + ".weight", rec.dtype, rec.stored_shape, lambda r=rec: stored_weight(r, src.get)))
    return entries


def stored_weight(rec: LayerRecord, get) -> torch.Tensor:
    """The dense weight as the checkpoint stores it: in×out for a transposed (Conv1D) layer."""
    w = dense_from_factors(rec, get)
    return w.T.contiguous() if rec.transposed else w


def like_input(src: Source) -> int | None:
    """The shard size of a sharded input (its largest shard), so that the dense output is sharded alike;
    the dense shards are larger than the compressed ones, so there are more of them."""
    if src.kind != "sharded":
        return None
    return max(f.stat().st_size for f in {t.file for t in src.tensors.values()})


def inflate(compressed: str | Path, out: str | Path, overwrite: bool = False,
            max_shard_size: str | int | None = None) -> dict:
    """Write dense weights under the original names, shapes and dtypes. File in → file out; dir in → dir out,
    sharded like the input unless ``max_shard_size`` says otherwise."""
    src = open_source(compressed)
    if max_shard_size is not None and src.side_dir() is None:
        raise UsageError(f"--max-shard-size: {src.display} is a single file, so its dense form is one file too")
    shard_bytes = parse_size(max_shard_size) if max_shard_size is not None else like_input(src)
    layers = read_layers(src)
    entries = dense_entries(src, layers)
    out = Path(out)
    # The dense file remembers where it came from: the compressed checkpoint's own record, whole.
    meta = {"format": "pt", "sinecompress_inflated": json.dumps(
        {"inflated_from": src.display, "tool_version": __version__, "compression": read_metadata(src.metadata,
                                                                                                  src.display)},
        sort_keys=True)}
    card = dense_card(src, "inflated", f"Dense weights inflated from the sinecompress checkpoint `{src.display}` "
                      f"({len(layers)} layers); they equal what `sinecompress.load` computes. Stock tools load "
                      "them as they load the original model.")
    write_like_source(src, out, entries, meta, overwrite, card=card, max_bytes=shard_bytes)
    return {"source": src.display, "output": str(out), "layers": sorted(layers), "tensors": len(entries)}
