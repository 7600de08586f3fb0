import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def tiny_state_dict(seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A small transformer-like state dict: linear layers, biases, an embedding and a norm."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "embed.weight": torch.randn(50, 24, generator=g),
        "blocks.0.fc1.weight": torch.randn(64, 24, generator=g) / 5,
        "blocks.0.fc1.bias": torch.randn(64, generator=g),
        "blocks.0.fc2.weight": torch.randn(24, 64, generator=g) / 8,
        "blocks.0.fc2.bias": torch.randn(24, generator=g),
        "blocks.0.norm.weight": torch.ones(24),
        "blocks.1.fc1.weight": torch.randn(64, 24, generator=g) / 5,
        "blocks.1.fc2.weight": torch.randn(24, 64, generator=g) / 8,
        "steps": torch.tensor([3], dtype=torch.int64),
    }
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), str(path), metadata={"format": "pt"})
    return path


@pytest.fixture
def tiny_sharded(tmp_path):
    import json

    sd = tiny_state_dict(1)
    d = tmp_path / "sharded"
    d.mkdir()
    names = list(sd)
    shards = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(d / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A small random-weight BERT saved as a Hugging Face directory."""
    import transformers

    d = tmp_path_factory.mktemp("bert")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(d))
    return d


def run_cli(*args, cwd=None):
    """Run the real CLI in a subprocess; returns CompletedProcess with text output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "sinecompress", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)
