"""A model and its own tokenizer, ready to evaluate: any source with side files (a compressed or dense
Hugging Face directory, ``example:NAME``, a ``.gguf`` file), in float32, in eval mode.

A bare ``.safetensors`` file is refused: without ``config.json`` there is no architecture to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, SineCompressError
from ..io.format import read_metadata
from ..io.hf_model import dense_model, is_causal_lm, model_class
from ..io.model_dir import has_tokenizer
from ..io.open import open_source
from ..pipeline.load import load

CAUSAL_LM = "causal_lm"
ENCODER = "encoder"


@dataclass
class Loaded:
    model: nn.Module  # float32, eval mode, on the requested device
    tokenizer: object
    kind: str  # CAUSAL_LM or ENCODER
    display: str
    compressed: bool


def model_dir(spec: str, src=None) -> Path:
    """The directory of side files (config, tokenizer) of MODEL/ORIG, with one-line errors. The caller
    keeps ``src`` alive while it uses the directory: a GGUF source removes its side directory with itself."""
    src = src if src is not None else open_source(spec)
    side = src.side_dir()
    if side is None:
        raise InputError(f"{spec}: eval needs a model directory with config.json (a bare weights file has no "
                         "architecture to run) or a .gguf file; point at the model directory")
    if not (side / "config.json").exists():
        raise InputError(f"{spec}: no config.json; eval needs a Hugging Face model directory "
                         "(config.json, weights and tokenizer) or a .gguf file")
    return side


def read_config(spec: str):
    """The transformers config of MODEL/ORIG (cheap for directories: no weights are read)."""
    try:
        src = open_source(spec)
        return model_class(model_dir(spec, src))[0]
    except SineCompressError:
        raise
    except Exception as e:  # transformers raises many types for unreadable or unknown configs
        raise InputError(f"{spec}: cannot read the model config ({type(e).__name__}: {_short(e)})") from None


def config_kind(spec: str) -> str:
    """CAUSAL_LM or ENCODER, from the config alone (used for early checks)."""
    return CAUSAL_LM if is_causal_lm(read_config(spec)) else ENCODER


def load_for_eval(spec: str, device: str = "cpu") -> Loaded:
    src = open_source(spec)
    side = src.side_dir()
    if side is None:
        model_dir(spec, src)  # raises the one-line error
    kind = config_kind(spec)
    tokenizer = _tokenizer(side, spec, gguf=src.kind == "gguf")
    compressed = read_metadata(src.metadata, src.display) is not None
    try:
        model = load(spec) if compressed else dense_model(src)
    except SineCompressError:
        raise
    except Exception as e:  # e.g. an architecture this transformers version does not know
        raise InputError(f"{spec}: cannot build the model ({type(e).__name__}: {_short(e)})") from None
    if kind == CAUSAL_LM and not _has_lm_head(model):
        raise InputError(f"{spec}: the model ({type(model).__name__}) has no language-model head, so it has "
                         "no perplexity; save it with its *ForCausalLM class")
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()
    return Loaded(model.to(device).eval(), tokenizer, kind, spec, compressed)


def _has_lm_head(model: nn.Module) -> bool:
    return callable(getattr(model, "get_output_embeddings", None)) and model.get_output_embeddings() is not None


def _tokenizer(directory: Path, spec: str, gguf: bool = False):
    if gguf and not has_tokenizer(directory):
        raise InputError(f"{spec}: this GGUF file has no tokenizer (no tokenizer.ggml.* metadata); eval tokenizes "
                         "the text with the model's own tokenizer, so use a GGUF file that includes it")
    if not has_tokenizer(directory):
        raise InputError(f"{spec}: no tokenizer files (tokenizer.json, vocab.txt, ...); eval tokenizes the "
                         "text with the model's own tokenizer, so copy them into the model directory")
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:
        raise InputError(f"{spec}: cannot load the tokenizer ({type(e).__name__}: {_short(e)})") from None


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:400]
