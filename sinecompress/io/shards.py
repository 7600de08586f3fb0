"""Sharded safetensors output: ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.

Every tensor's size is known from the header before any is written, so the split (and hence N)
is decided up front; each shard is then streamed with ``write_safetensors``. Every shard carries
the same ``__metadata__``, so a reader that opens any one of them finds the compression record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .sources import INDEX_NAME, SINGLE_NAME
from .writer import Entry, write_safetensors


def split_shards(entries: list[Entry], max_bytes: int | None) -> list[list[Entry]]:
    """Consecutive groups of at most ``max_bytes`` of tensor data (a bigger tensor gets a shard of its own)."""
    if max_bytes is None:
        return [list(entries)]
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_weights(dest: Path, entries: list[Entry], metadata: dict[str, str], max_bytes: int | None = None,
                  mine: Callable[[int], bool] = lambda i: True, index: bool = True,
                  on_tensor: Callable[[Entry], None] | None = None) -> list[str]:
    """Write the weights into directory ``dest`` (one file, or shards + index); return the file names.

    ``mine(i)`` picks the shards this process writes (all of them unless several processes share
    the work); ``index`` says whether this process writes the index.
    """
    shards = split_shards(entries, max_bytes)
    names = shard_names(len(shards))
    for i, (name, group) in enumerate(zip(names, shards)):
        if mine(i):
            write_safetensors(dest / name, group, metadata, on_tensor)
    if len(shards) > 1 and index:
        weight_map = {e.name: name for name, group in zip(names, shards) for e in group}
        doc = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
        (dest / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    return names
