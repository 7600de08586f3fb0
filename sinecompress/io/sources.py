"""Lazy checkpoint readers: one tensor in memory at a time.

``Source`` is what every stage reads: tensor names, shapes and dtypes up front, one tensor per
``get``. This module reads safetensors files, sharded directories (``model.safetensors.index.json``)
and Hugging Face model directories; ``io/open.py`` picks the reader for a spec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import InputError
from .header import check_safetensors_header
from .paths import member, regular_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, e.g. "F32"
    file: Path


@dataclass
class Source:
    """A lazily read checkpoint. ``get`` loads one tensor; nothing else is held."""

    path: Path
    kind: str  # "file" | "sharded" | "hf_dir"
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    model_dir: Path | None = None  # set for directories: config, tokenizer and friends live here
    display: str = ""

    def keys(self) -> list[str]:
        return list(self.tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: t.shape for k, t in self.tensors.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        return {k: t.dtype for k, t in self.tensors.items()}

    def get(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        try:
            with safe_open(str(info.file), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise InputError(f"{info.file}: cannot read tensor {name!r} ({e})") from None

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensors:
            yield name, self.get(name)

    def side_dir(self) -> Path | None:
        """The directory holding the model's side files (config.json, tokenizer, ...), or None for a bare
        checkpoint. Outputs of a source with side files are model directories."""
        return self.model_dir

    def config(self) -> dict | None:
        """The model directory's config.json as a dict, or None without one; InputError if it is broken."""
        if not self.model_dir or not os.path.lexists(self.model_dir / "config.json"):
            return None
        return read_json(member(self.model_dir, "config.json", "config.json"), dict, "a JSON object")

    def total_bytes(self) -> int:
        return sum({t.file: t.file.stat().st_size for t in self.tensors.values()}.values())

    def paths(self) -> list[Path]:
        """Every path on disk this source reads (an output must stay clear of all of them)."""
        found = {self.path, *(t.file for t in self.tensors.values())}
        if self.model_dir is not None:
            found.add(self.model_dir)
        return sorted(p for p in found if p.exists())


def read_json(path: Path, kind: type, what: str):
    """A small JSON file that must hold ``kind``; InputError naming the file otherwise."""
    try:
        doc = json.loads(regular_file(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(doc, kind):
        raise InputError(f"{path}: expected {what}, found a JSON {type(doc).__name__}")
    return doc


def _read_file(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    header = check_safetensors_header(regular_file(path, "checkpoint"))
    meta = header.pop("__metadata__", None) or {}
    infos = {k: TensorInfo(k, tuple(v["shape"]), v["dtype"], path) for k, v in header.items()}
    return infos, meta


def open_file(path: Path) -> Source:
    infos, meta = _read_file(path)
    return Source(path, "file", infos, meta, display=str(path))


def open_dir(path: Path) -> Source | None:
    """A sharded or single-file model directory; None when it holds neither."""
    index = path / INDEX_NAME
    if os.path.lexists(index):
        weight_map = read_index(index)
        tensors: dict[str, TensorInfo] = {}
        meta: dict[str, str] = {}
        for shard in sorted(set(weight_map.values())):
            if not os.path.lexists(path / shard):
                raise InputError(f"{index}: shard {shard!r} is missing")
            infos, m = _read_file(member(path, shard, "shard"))
            meta = meta or m
            tensors.update({k: v for k, v in infos.items() if weight_map.get(k) == shard})
        missing = set(weight_map) - set(tensors)
        if missing:
            raise InputError(f"{index}: {len(missing)} tensors listed but absent from their shards, "
                             f"e.g. {sorted(missing)[0]!r}")
        ordered = {k: tensors[k] for k in weight_map}
        return Source(path, "sharded", ordered, meta, model_dir=path, display=str(path))
    if os.path.lexists(path / SINGLE_NAME):
        infos, meta = _read_file(member(path, SINGLE_NAME, "weights file"))
        return Source(path, "hf_dir", infos, meta, model_dir=path, display=str(path))
    return None


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index, checked: shard names are plain file names."""
    weight_map = read_json(member(index.parent, index.name, "shard index"), dict, "a JSON object").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index}: not a valid safetensors index (needs a 'weight_map' object naming the "
                         "tensors and their shards)")
    for name, shard in weight_map.items():
        # A shard named "../x" or "/etc/x" would read outside the model directory.
        if not isinstance(shard, str) or not shard or shard != Path(shard).name or shard in (".", ".."):
            raise InputError(f"{index}: tensor {name!r} maps to {shard!r}, which is not a file in this directory")
    return weight_map


def tied_heads(src: Source) -> list[str]:
    """Module names of output heads that share weights with an input embedding."""
    cfg = src.config() or {}
    heads = [k[: -len(".weight")] for k in src.tensors if k.endswith(".weight")
             and k.split(".")[-2] in ("lm_head", "embed_out", "output", "head", "cls")]
    if cfg.get("tie_word_embeddings", True) and heads:
        return heads
    return []
