"""`sinecompress adapter merge`: a thin CLI over merge_checkpoint, with one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sinecompress.adapters import AdapterConfig, inject_adapters, iter_adapters, save_adapter
from sinecompress.io.examples import example_dir

from .helpers import assert_one_line_error, cli


@pytest.fixture()
def base_and_adapter(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "base.safetensors"))
    inject_adapters(model, AdapterConfig(kind="sine_lora", r=3, omega=100.0), [r"0|2"])
    with torch.no_grad():
        for _, m in iter_adapters(model):
            m.lora_B.weight.normal_(0, 0.1)
    save_adapter(model, tmp_path / "ad")
    x = torch.randn(4, 12)
    return tmp_path, model, x


def test_merge_cli_writes_equivalent_dense_checkpoint(base_and_adapter):
    tmp, model, x = base_and_adapter
    code, out, err = cli("adapter", "merge", tmp / "base.safetensors", tmp / "ad",
                           "--out", tmp / "m.safetensors", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["merged_modules"] == ["0", "2"]
    dense = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    dense.load_state_dict(load_file(str(tmp / "m.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=1e-5, atol=1e-6)
    # existing output is refused (usage error, exit 2) and left untouched
    before = (tmp / "m.safetensors").read_bytes()
    code, _, err = cli("adapter", "merge", tmp / "base.safetensors", tmp / "ad", "--out", tmp / "m.safetensors")
    assert_one_line_error(code, err, 2, "--overwrite")
    assert (tmp / "m.safetensors").read_bytes() == before


def test_merge_cli_missing_adapter_is_one_line_exit_3(base_and_adapter):
    tmp, _, _ = base_and_adapter
    code, out, err = cli("adapter", "merge", tmp / "base.safetensors", tmp / "nope", "--out", tmp / "out.safetensors")
    assert_one_line_error(code, err, 3, "nope")
    assert out == ""
    assert [p.name for p in tmp.iterdir() if p.name.startswith(("out", ".out"))] == []


@pytest.mark.parametrize("case", ["missing_base", "shape_mismatch", "corrupt_weights"])
def test_merge_cli_bad_input_is_one_line_exit_3(base_and_adapter, case):
    tmp, _, _ = base_and_adapter
    base, want = tmp / "base.safetensors", None
    if case == "missing_base":
        base, want = tmp / "nope.safetensors", "nope.safetensors"
    elif case == "shape_mismatch":
        other = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 8))
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp / "other.safetensors"))
        base, want = tmp / "other.safetensors", "adapter module '0'"
    else:
        w = tmp / "ad" / "adapter_model.safetensors"
        w.write_bytes(w.read_bytes()[:-10])
        want = "adapter_model.safetensors"
    code, out, err = cli("adapter", "merge", base, tmp / "ad", "--out", tmp / "out.safetensors")
    assert_one_line_error(code, err, 3, want)
    assert out == ""
    assert [p.name for p in tmp.iterdir() if p.name.startswith(("out", ".out"))] == []


@pytest.mark.slow
def test_merge_cli_on_bundled_minilm_directory(tmp_path):
    """A Hugging Face directory base gives a directory that stock transformers loads, equal to the adapted model."""
    transformers = pytest.importorskip("transformers")
    src = example_dir("minilm")
    model = transformers.AutoModel.from_pretrained(str(src)).eval()
    inject_adapters(model, AdapterConfig(kind="sine_dora", r=2, omega=200.0),
                    [r"encoder\.layer\.[01]\.attention\.self\.(query|value)"])
    with torch.no_grad():
        for _, m in iter_adapters(model):
            m.lora_B.weight.normal_(0, 0.05)
    save_adapter(model, tmp_path / "ad")
    code, out, err = cli("adapter", "merge", "example:minilm", tmp_path / "ad", "--out", tmp_path / "merged")
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").exists() and (tmp_path / "merged" / "tokenizer.json").exists()
    merged = transformers.AutoModel.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state,
                                   rtol=1e-4, atol=1e-4)
