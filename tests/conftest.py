"""The tests' fixtures. Builders and runners they use are plain functions in ``helpers.py``."""

import json

import pytest
from safetensors.torch import save_file

from .helpers import tiny_bert, tiny_state
from .helpers import tiny_file as write_tiny_file


@pytest.fixture
def tiny_file(tmp_path):
    """The default tiny checkpoint (two blocks of 64x24 / 24x64 layers) as one .safetensors file."""
    return write_tiny_file(tmp_path / "tiny.safetensors")


@pytest.fixture
def tiny_sharded(tmp_path):
    """A tiny checkpoint split over two shards with a model.safetensors.index.json."""
    sd = tiny_state(1)
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
    """A tiny random-weight BERT directory with a tokenizer (shared by the session: do not write into it)."""
    return tiny_bert(tmp_path_factory.mktemp("bert"))
