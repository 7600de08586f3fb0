"""Calibration batches: what the model sees while we measure what each target layer sees.

* ``--calib FILE``: text lines (``.txt``) or JSONL ``{"text": ...}`` for text models, tokenized
  with the model's own tokenizer; or a ``.safetensors`` file of input tensors (``input_ids``,
  ``attention_mask``, ... or any tensors the model's ``forward`` takes by name).
* the built-in default for text models: ``calib/text.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import InputError
from ..io.header import check_safetensors_header
from ..io.paths import regular_file
from .text import SEPARATOR, builtin_texts, read_texts


@dataclass
class CalibData:
    """Batches of keyword inputs for ``model(**batch)``; ``mask`` marks real tokens (or None)."""

    batches: list[dict[str, torch.Tensor]]
    description: str

    @property
    def samples(self) -> int:
        return sum(next(iter(b.values())).shape[0] for b in self.batches)


def with_padding(tok, where) -> None:
    """Give a tokenizer without a pad token one (most causal LMs ship none): padded positions are masked
    out of every statistic, so which token fills them does not matter."""
    if tok.pad_token is None:
        fill = tok.eos_token or tok.unk_token or tok.bos_token
        if fill is None:
            raise InputError(f"{where}: the tokenizer has no pad, eos, unk or bos token to pad batches with; "
                             "pass a safetensors --calib file of input tensors")
        tok.pad_token = fill


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:
        raise InputError(f"{model_dir}: cannot load the model's tokenizer for calibration ({e}); "
                         "pass --no-calib or a safetensors --calib file of input tensors") from None
    with_padding(tok, model_dir)
    return tok


def tokenize(texts: list[str], model_dir: Path, seq_len: int, batch_size: int = 32) -> list[dict]:
    return length_batches(_tokenizer(model_dir), texts, seq_len, batch_size)[0]


def packed_batches(tok, texts: list[str], rows: int, seq_len: int, batch_size: int = 32,
                   where: str = "the calibration text") -> list[dict]:
    """The texts joined with SEPARATOR into one token stream (as ``sinecompress eval`` reads text), cut into
    at most ``rows`` rows of ``seq_len`` tokens; a stream shorter than one row is one shorter row."""
    ids = tok(SEPARATOR.join(texts), verbose=False)["input_ids"]
    if not ids:
        raise InputError(f"{where}: the calibration text tokenizes to nothing; give a file with some text")
    n = max(1, min(rows, len(ids) // seq_len))
    x = torch.tensor(ids[:n * seq_len], dtype=torch.long).reshape(n, -1)
    return [{"input_ids": x[i:i + batch_size], "attention_mask": torch.ones_like(x[i:i + batch_size])}
            for i in range(0, n, batch_size)]


def length_batches(tok, texts: list[str], max_length: int, batch_size: int = 32) -> tuple[list[dict], torch.Tensor]:
    """Padded batches of similar-length texts (padding is wasted compute on a CPU), and each text's row in
    their concatenation, so that per-text results can be put back in text order."""
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = []
    for i in range(0, len(order), batch_size):
        chunk = [texts[j] for j in order[i:i + batch_size]]
        enc = tok(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batches.append(dict(enc))
    rows = torch.empty(len(texts), dtype=torch.long)
    rows[torch.tensor(order, dtype=torch.long)] = torch.arange(len(texts))
    return batches, rows


def read_tensor_inputs(path: Path, samples: int, batch_size: int = 32) -> list[dict]:
    check_safetensors_header(path)
    tensors = load_file(str(path))
    if not tensors:
        raise InputError(f"{path}: no tensors in the calibration file")
    flat = next((k for k, t in tensors.items() if t.dim() == 0), None)
    if flat is not None:
        raise InputError(f"{path}: tensor {flat!r} is 0-dimensional; calibration tensors have a sample dimension first")
    n = {t.shape[0] for t in tensors.values()}
    if len(n) != 1:
        raise InputError(f"{path}: calibration tensors must share their first (sample) dimension")
    total = min(n.pop(), samples)
    return [{k: v[i:min(i + batch_size, total)] for k, v in tensors.items()} for i in range(0, total, batch_size)]


def load_calibration(calib: str | Path | None, model_dir: Path | None, samples: int, seq_len: int,
                     batch_size: int = 32, pack: bool = False) -> CalibData:
    """Calibration batches from ``calib`` (a file) or, when None, the built-in stdlib text. With ``pack``,
    texts are joined and cut into ``samples`` rows of ``seq_len`` tokens (``packed_batches``)."""
    if calib is not None:
        path = Path(calib)
        if not path.exists():
            raise InputError(f"{path}: calibration file not found")
        regular_file(path, "calibration file")
        if path.suffix == ".safetensors":
            return CalibData(read_tensor_inputs(path, samples, batch_size), f"{path.name} (tensors)")
        if model_dir is None:
            raise InputError(f"{path}: text calibration needs a model directory with a tokenizer")
        texts, name = read_texts(path), path.name
    else:
        texts, name = builtin_texts("calib"), "built-in stdlib docstrings"
    if pack:
        batches = packed_batches(_tokenizer(model_dir), texts, samples, seq_len, batch_size, where=str(calib or name))
        rows = sum(b["input_ids"].shape[0] for b in batches)
        return CalibData(batches, f"{name} ({len(texts)} texts packed into {rows} rows of "
                                  f"{batches[0]['input_ids'].shape[1]} tokens)")
    texts = texts[:samples]
    return CalibData(tokenize(texts, model_dir, seq_len, batch_size), f"{name} ({len(texts)} texts)")
