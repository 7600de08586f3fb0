"""``open_source``: from what the user typed to a lazily read ``Source``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .examples import example_dir
from .gguf import GGUF_EXAMPLES, example_gguf, open_gguf
from .memory import timm_source
from .pickle import open_pickle
from .sources import INDEX_NAME, SINGLE_NAME, Source, open_dir, open_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def open_source(spec: str | Path, allow_pickle: bool = False) -> Source:
    """Open a checkpoint for lazy reading; raise InputError naming the path if it cannot be read.

    A spec is a ``.safetensors`` file, a sharded or Hugging Face model directory, a ``.gguf`` file (or
    any file starting with GGUF's magic bytes), ``example:NAME`` (minilm, smollm2) or ``timm:NAME``. Pickle checkpoints (``.bin``/``.pt``/``.pth``) are refused unless
    ``allow_pickle``, and even then are loaded with ``torch.load(weights_only=True)``, which never
    runs code from the file.
    """
    spec = str(spec)
    if spec.startswith("example:"):
        name = spec.split(":", 1)[1]
        src = open_gguf(example_gguf(name)) if name in GGUF_EXAMPLES else open_source(example_dir(name))
        src.display = spec
        return src
    if spec.startswith("timm:"):
        return timm_source(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        src = open_dir(path)
        if src is not None:
            return src
        pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
        if pickles and allow_pickle:
            return open_pickle(pickles, model_dir=path)
        if pickles:
            raise InputError(f"{path}: only pickle weights (.bin/.pt) found; convert them to safetensors "
                             "or pass --allow-pickle to load them with weights_only=True")
        raise InputError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} in this directory")
    if path.suffix.lower() == ".gguf" or _starts_with(path, b"GGUF"):
        return open_gguf(path)
    if path.suffix in PICKLE_SUFFIXES:
        if allow_pickle:
            return open_pickle(path)
        raise InputError(f"{path}: pickle-based checkpoint refused; convert it to safetensors "
                         "or pass --allow-pickle to load it with weights_only=True")
    return open_file(path)


def _starts_with(path: Path, magic: bytes) -> bool:
    """Whether a regular file starts with ``magic`` (a GGUF file named without its suffix)."""
    try:
        if not path.is_file():  # a FIFO or device must not be opened here
            return False
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False  # the reader chosen by suffix reports why it cannot be read
