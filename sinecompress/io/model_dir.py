"""Model directories: the side files (config, tokenizer, ...) that travel with the weights, and dense
outputs shaped like their source."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from .atomic import atomic_output
from .sources import INDEX_NAME, SINGLE_NAME, Source
from .writer import Entry, write_safetensors

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")
# Files that hold a vocabulary: a tokenizer built without one maps every word to [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")

ConfigEdit = Callable[[dict], dict]


def has_tokenizer(model_dir: Path | None) -> bool:
    return model_dir is not None and any((model_dir / f).exists() for f in TOKENIZER_FILES)


def copy_model_files(model_dir: Path, dest: Path, edit_config: ConfigEdit | None = None) -> None:
    """Copy config, tokenizer and other side files; never the weights (they are rewritten).
    ``edit_config`` rewrites ``config.json`` on the way."""
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir)
        if p.is_dir() or p.name.endswith(WEIGHT_FILES) or p.name == INDEX_NAME or rel.parts[0].startswith("."):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest / rel)
    cfg = dest / "config.json"
    if edit_config is not None and cfg.exists():
        doc = edit_config(json.loads(cfg.read_text()))
        cfg.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def drop_compression(cfg: dict) -> dict:
    """config.json of a dense output: nothing to decompress."""
    cfg.pop("compression_config", None)
    return cfg


def write_like_source(src: Source, out: Path, entries: list[Entry], meta: dict[str, str], overwrite: bool,
                      edit_config: ConfigEdit | None = drop_compression) -> None:
    """One-file dense output shaped like ``src``: a file for a file, a model directory (side files copied,
    ``config.json`` passed through ``edit_config``) for a directory."""
    with atomic_output(out, overwrite) as tmp:
        if src.model_dir is None:
            write_safetensors(tmp, entries, meta)
            return
        tmp.mkdir()
        copy_model_files(src.model_dir, tmp, edit_config)
        write_safetensors(tmp / SINGLE_NAME, entries, meta)
