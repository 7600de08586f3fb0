"""Model directories: the side files (config, tokenizer, ...) that travel with the weights, and dense
outputs shaped like their source."""

from __future__ import annotations

import json
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, SineCompressWarning
from .atomic import atomic_output
from .format import is_ours
from .header import check_safetensors_header
from .paths import describe, link_allowed, member
from .shards import write_weights
from .sources import INDEX_NAME, SINGLE_NAME, Source, read_json
from .writer import Entry, write_safetensors

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")
# Files that hold a vocabulary: a tokenizer built without one maps every word to [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")

ConfigEdit = Callable[[dict], dict]


def not_a_model_output(path: Path) -> str | None:
    """None when ``path`` looks like a checkpoint this tool writes (a safetensors file, or a directory
    with safetensors weights or an adapter); else what it is instead. ``--overwrite`` replaces only those."""
    if path.is_dir():
        if any((path / f).exists() for f in (SINGLE_NAME, INDEX_NAME, "adapter_model.safetensors")):
            return None
        return "is a directory without model.safetensors, a shard index or an adapter"
    try:
        check_safetensors_header(path)
    except InputError:
        return "is not a safetensors file"
    return None


def has_tokenizer(model_dir: Path | None) -> bool:
    return model_dir is not None and any((model_dir / f).exists() for f in TOKENIZER_FILES)


def copy_model_files(model_dir: Path, dest: Path, edit_config: ConfigEdit | None = None) -> None:
    """Copy config, tokenizer and other side files; never the weights (they are rewritten).
    ``edit_config`` rewrites ``config.json`` on the way. Only regular files are copied, and no link that
    leads out of the model directory (it could carry a secret into the output): those are left out with
    a warning."""
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir)
        if p.name.endswith(WEIGHT_FILES) or p.name == INDEX_NAME or rel.parts[0].startswith("."):
            continue
        if not link_allowed(p, model_dir):
            warnings.warn(f"{p}: not copied to the output: it links outside {model_dir}", SineCompressWarning,
                          stacklevel=2)
            continue
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:  # a link that leads nowhere: nothing to copy
            warnings.warn(f"{p}: not copied to the output: it is a broken link", SineCompressWarning, stacklevel=2)
            continue
        except OSError as e:
            raise InputError(f"{p}: cannot read this side file of the model ({e.strerror or e})") from None
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            warnings.warn(f"{p}: not copied to the output: it is {describe(mode)}", SineCompressWarning, stacklevel=2)
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"{p}: cannot read this side file of the model ({e.strerror or e})") from None
        (dest / rel).write_bytes(data)
    cfg = dest / "config.json"
    if edit_config is not None and cfg.exists():  # edited from the source, read as every config.json is read
        try:
            doc = edit_config(read_json(member(model_dir, "config.json", "config.json"), dict, "a JSON object"))
        except InputError as e:  # the edit says what is wrong; here is where
            raise InputError(f"{model_dir / 'config.json'}: {e}") from None
        cfg.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def drop_compression(cfg: dict) -> dict:
    """config.json of a dense output: nothing to decompress."""
    cfg.pop("compression_config", None)
    qc = cfg.pop("quantization_config", None)
    if qc is not None and not is_ours(qc):  # copied on, it would make loaders dequantize dense weights
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        raise InputError(f"its quantization_config (quant_method {method!r}) is not sinecompress's, "
                         "and these weights are not quantized that way; restore the model's own config.json")
    return cfg


def write_like_source(src: Source, out: Path, entries: list[Entry], meta: dict[str, str], overwrite: bool,
                      edit_config: ConfigEdit | None = drop_compression, card: str | None = None,
                      max_bytes: int | None = None) -> None:
    """Dense output shaped like ``src``: a file for a file, a model directory (side files copied,
    ``config.json`` passed through ``edit_config``, ``card`` as its README.md, weights in shards of at most
    ``max_bytes``) for a directory."""
    side = src.side_dir()
    kind = "file" if side is None else "dir"
    with atomic_output(out, overwrite, src.paths(), kind, not_a_model_output) as tmp:
        if side is None:
            write_safetensors(tmp, entries, meta)
            return
        tmp.mkdir()
        copy_model_files(side, tmp, edit_config)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        write_weights(tmp, entries, meta, max_bytes)
