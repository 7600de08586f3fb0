"""Pickle checkpoints (``.bin``/``.pt``), read only when the user passes ``--allow-pickle``.

A pickle can run arbitrary code when unpickled, so the file is opened with
``torch.load(weights_only=True)``: its restricted unpickler accepts tensors and plain containers
only and raises on anything else, before any object from the file is built. Memory-mapped where
the file's format allows, so tensors are paged in as they are read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..dtypes import FROM_TORCH
from ..errors import InputError
from .sources import Source, TensorInfo


class PickleSource(Source):
    """A Source whose tensors come from a weights-only unpickled state dict."""

    _state: dict[str, torch.Tensor]

    def get(self, name: str) -> torch.Tensor:
        return self._state[name].contiguous()

    def total_bytes(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else sum(
            t.numel() * t.element_size() for t in self._state.values())


def load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # the restricted unpickler raises UnpicklingError for any code it refuses to run
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: refused to load pickle with weights_only=True ({first[:200]})") from None
    # Training scripts often wrap the weights: {"state_dict": {...}} or {"model": {...}}.
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: the pickle holds no name → tensor mapping (a state dict was expected)")
    state = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor) and isinstance(k, str):
            if v.dtype not in FROM_TORCH:
                raise InputError(f"{path}: tensor {k!r} has unsupported dtype {v.dtype}")
            state[k] = v
    return state


def open_pickle(path: Path | list[Path], model_dir: Path | None = None) -> PickleSource:
    """A source over one pickle file, or over all the shards of a directory (``pytorch_model-0000i-of-N.bin``)."""
    paths = path if isinstance(path, list) else [path]
    state: dict[str, torch.Tensor] = {}
    infos: dict[str, TensorInfo] = {}
    for p in paths:
        part = load_state(p)
        dup = next((k for k in part if k in state), None)
        if dup is not None:
            raise InputError(f"{p}: tensor {dup!r} also appears in another pickle file of {model_dir or p.parent}")
        state.update(part)
        infos.update({k: TensorInfo(k, tuple(v.shape), FROM_TORCH[v.dtype], p) for k, v in part.items()})
    path = paths[0]
    shown = str(model_dir if model_dir is not None else path)
    src = PickleSource(model_dir or path, "pickle", infos, {}, model_dir=model_dir, display=shown)
    src._state = state
    return src
