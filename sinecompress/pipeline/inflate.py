"""Inflate a compressed checkpoint back to plain dense weights that stock tools load."""

from __future__ import annotations

from pathlib import Path

from ..io.format import LayerRecord, dense_from_factors, owned_tensors, read_layers
from ..io.model_dir import write_like_source
from ..io.open import open_source
from ..io.sources import Source
from ..io.writer import Entry


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
            entries.append(Entry(layer + ".weight", rec.dtype, rec.shape, lambda r=rec: dense_from_factors(r, src.get)))
    return entries


def inflate(compressed: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write dense weights under the original names, shapes and dtypes. File in → file out; dir in → dir out."""
    src = open_source(compressed)
    layers = read_layers(src)
    entries = dense_entries(src, layers)
    out = Path(out)
    write_like_source(src, out, entries, {"format": "pt"}, overwrite)
    return {"source": src.display, "output": str(out), "layers": sorted(layers), "tensors": len(entries)}
