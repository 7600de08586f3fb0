"""Inflate a compressed checkpoint back to plain dense weights that stock tools load."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .factorize import write_like_source
from .format import ST_TO_TORCH, factor_names, read_metadata
from .sources import Source, open_source
from .writer import Entry


def compressed_layers(src: Source) -> dict[str, dict]:
    """The layer records of a compressed checkpoint (each with its module ``name``); error if not compressed."""
    doc = read_metadata(src.metadata, src.display)
    if doc is None:
        raise InputError(f"{src.display}: not a sinecompress checkpoint (no '{'sinecompress'}' metadata); "
                         "run `sinecompress factorize` first")
    layers = doc["layers"]
    for name, rec in layers.items():
        rec["name"] = name
        for fname in factor_names(name, rec["kind"], rec.get("linear_rank", 0)):
            if fname not in src.tensors:
                raise InputError(f"{src.display}: layer {name!r} is missing its factor tensor {fname!r}")
    return layers


def dense_entries(src: Source, layers: dict[str, dict]) -> list[Entry]:
    from .format import dense_from_factors

    owned = {f: name for name, rec in layers.items()
             for f in factor_names(name, rec["kind"], rec.get("linear_rank", 0))}
    entries, done = [], set()
    for name, info in src.tensors.items():
        layer = owned.get(name)
        if layer is None:
            entries.append(Entry(name, info.dtype, info.shape, lambda n=name: src.get(n)))
        elif layer not in done:  # the dense weight takes the place of the layer's first factor
            done.add(layer)
            rec = layers[layer]
            ST_TO_TORCH[rec["dtype"]]  # validates the recorded dtype
            entries.append(Entry(layer + ".weight", rec["dtype"], tuple(rec["shape"]),
                                 lambda r=rec: dense_from_factors(r, src.get)))
    return entries


def inflate(compressed: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write dense weights under the original names, shapes and dtypes. File in → file out; dir in → dir out."""
    src = open_source(compressed)
    layers = compressed_layers(src)
    entries = dense_entries(src, layers)
    out = Path(out)
    meta = {"format": "pt"}
    write_like_source(src, out, entries, meta, overwrite)
    return {"source": src.display, "output": str(out), "layers": sorted(layers), "tensors": len(entries)}
