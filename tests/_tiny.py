"""A tiny BERT directory (random weights, MiniLM's tokenizer) for fast calibration tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sinecompress.io.examples import example_dir


def tiny_bert_dir(root: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    d = root / "tiny_bert"
    d.mkdir()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
    model = BertModel(cfg)
    cfg.save_pretrained(d)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    src = example_dir("minilm")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, d / f)
    return d
