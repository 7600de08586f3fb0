"""Sharded safetensors output: ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.

Every tensor's size is known from the header before any is written, so the split (and hence N)
is decided up front; each shard is then streamed with ``write_safetensors``. Every shard carries
the same ``__metadata__``, so a reader that opens any one of them finds the compression record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from huggingface_hub.serialization import split_state_dict_into_shards_factory

from .sources import INDEX_NAME, SINGLE_NAME
from .writer import Entry, write_safetensors

PATTERN = "model{suffix}.safetensors"  # model.safetensors, or model-00001-of-00003.safetensors ...


def split_shards(entries: list[Entry], max_bytes: int | None) -> dict[str, list[Entry]]:
    """Shard file name -> consecutive entries of at most ``max_bytes`` (a bigger tensor gets a shard of its
    own), named as Hugging Face names shards; one ``model.safetensors`` when everything fits."""
    if max_bytes is None:
        return {SINGLE_NAME: list(entries)}
    by_name = {e.name: e for e in entries}
    split = split_state_dict_into_shards_factory(by_name, get_storage_size=lambda e: e.nbytes,
                                                 filename_pattern=PATTERN, max_shard_size=max_bytes)
    return {name: [by_name[k] for k in keys] for name, keys in split.filename_to_tensors.items()}


def write_weights(dest: Path, entries: list[Entry], metadata: dict[str, str], max_bytes: int | None = None,
                  mine: Callable[[int], bool] = lambda i: True, index: bool = True,
                  on_tensor: Callable[[Entry], None] | None = None) -> list[str]:
    """Write the weights into directory ``dest`` (one file, or shards + index); return the file names.

    ``mine(i)`` picks the shards this process writes (all of them unless several processes share
    the work); ``index`` says whether this process writes the index.
    """
    shards = split_shards(entries, max_bytes)
    names = list(shards)
    for i, name in enumerate(names):
        if mine(i):
            write_safetensors(dest / name, shards[name], metadata, on_tensor)
    if len(shards) > 1 and index:
        weight_map = {e.name: name for name, group in shards.items() for e in group}
        doc = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
        (dest / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    return names
