"""What a layer is in the model decides how it is compressed: GPT-2's Conv1D layers (weights stored in×out)
are fitted as out×in linear maps and inflated back in×out; a target that is not a linear layer, or a layer
the config's model does not have, is refused at plan time."""

from __future__ import annotations

import json

import pytest
import torch

from sinecompress import factorize, inflate, load
from sinecompress.errors import InputError, UsageError
from sinecompress.io.format import LayerRecord

from .helpers import tiny_gpt2, tiny_llama

FAST = {"rank": 8, "steps": 3, "ft_steps": 3, "calib_samples": 4, "seq_len": 16}
IDS = torch.tensor([[5, 9, 14, 22, 7, 30, 11, 6, 18, 40]])


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.mark.parametrize("settings", [
    {},  # calibrated, block by block with a block tune (the causal-LM default)
    {"finetune": "global"},
    {"calibration": False, "method": "svd", "ft_steps": 0},
], ids=["block", "global", "weights-only"])
def test_gpt2_conv1d_layers_round_trip_through_every_loader(gpt2, tmp_path, settings):
    import transformers

    out, dense = tmp_path / "sc", tmp_path / "dense"
    summary = factorize(gpt2, out, **{**FAST, **settings})
    fitted = {layer["name"]: layer for layer in summary["layers"]}
    assert "transformer.h.0.attn.c_attn" in fitted and "transformer.h.1.mlp.c_proj" in fitted
    qc = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    assert qc["transformer.h.0.attn.c_attn"]["shape"] == [96, 32] and qc["transformer.h.0.attn.c_attn"]["transposed"]
    ours = logits(load(out))
    inflate(out, dense)
    stock = transformers.AutoModelForCausalLM.from_pretrained(str(dense))
    assert type(stock.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert stock.transformer.h[0].attn.c_attn.weight.shape == (32, 96)  # in×out, as GPT-2 stores it
    assert torch.allclose(ours, logits(stock), atol=1e-4), (ours - logits(stock)).abs().max()
    via_hf = transformers.AutoModelForCausalLM.from_pretrained(str(out))  # `import sinecompress` integration
    assert torch.allclose(ours, logits(via_hf), atol=1e-4)
    again = tmp_path / "dequantized"
    via_hf.dequantize()
    via_hf.save_pretrained(str(again))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(again))
    assert torch.allclose(ours, logits(reloaded), atol=1e-4)


def test_a_conv1d_record_without_its_flag_is_refused_not_run_transposed():
    from transformers.pytorch_utils import Conv1D

    from sinecompress.nn.surgery import replaceable

    old_style = LayerRecord("c_attn", "lowrank", (96, 32), "F32", 4)
    assert "written by an earlier sinecompress that mishandled Conv1D" in replaceable(Conv1D(96, 32), old_style)
    assert replaceable(Conv1D(96, 32), LayerRecord("c_attn", "lowrank", (96, 32), "F32", 4, transposed=True)) is None
    assert "a module of class Embedding there, not a linear layer" in replaceable(torch.nn.Embedding(10, 4), old_style)


def test_a_target_that_is_not_a_linear_layer_is_refused(tmp_path):
    llama = tiny_llama(tmp_path)
    with pytest.raises(UsageError, match=r"--target matches 'model.embed_tokens', a module of class "
                                         r"Embedding in the model, not a linear layer"):
        factorize(llama, tmp_path / "out", rank=4, calibration=False, targets=["model.embed_tokens"])
    assert not (tmp_path / "out").exists()


def llama_with(tmp_path, **config):
    """The tiny Llama with some config.json keys replaced."""
    llama = tiny_llama(tmp_path)
    cfg = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**cfg, **config}))
    return llama


@pytest.mark.parametrize("config, match", [
    ({"num_hidden_layers": 1}, r"holds 'model.layers.1.[\w.]+.weight', but the model its config.json describes has "
                               r"no such layer"),  # it crashed after all the fitting (KeyError, exit 4)
    ({"vocab_size": 100}, r"weight '[\w.]+' has shape \[\d+, 32\], but the model config.json describes needs "
                          r"\[100, 32\]"),
], ids=["fewer-layers", "other-vocabulary"])
def test_a_config_that_does_not_belong_to_the_weights_is_refused_before_fitting(tmp_path, config, match):
    with pytest.raises(InputError, match=match):
        factorize(llama_with(tmp_path, **config), tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_a_directory_where_every_layer_stays_dense_loads_as_a_dense_model(tmp_path):
    import transformers

    llama = tiny_llama(tmp_path)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="at or above break-even"):
        factorize(llama, out, rank=1000, calibration=False)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())  # {layers: {}} broke loading
    stock = transformers.AutoModelForCausalLM.from_pretrained(str(llama))
    assert torch.equal(logits(load(out)), logits(stock))
    assert torch.equal(logits(transformers.AutoModelForCausalLM.from_pretrained(str(out))), logits(stock))


def test_architectures_that_contradict_model_type_follow_model_type_like_the_auto_classes(tmp_path):
    from sinecompress.io.hf_model import model_class

    llama = llama_with(tmp_path, architectures=["MistralForCausalLM"])
    config, cls = model_class(llama)
    assert cls.__name__ == "AutoModelForCausalLM" and type(cls.from_config(config)).__name__ == "LlamaForCausalLM"
    factorize(llama, tmp_path / "out", **FAST)  # it used to fail deep inside the model (exit 4)


def test_a_head_the_config_ties_to_the_embedding_is_not_a_target(tmp_path):
    llama = llama_with(tmp_path, tie_word_embeddings=True)
    with pytest.raises(UsageError, match=r"--target matches 'lm_head', which .* ties to the input embedding"):
        factorize(llama, tmp_path / "out", rank=4, calibration=False, targets=["lm_head"])


def test_report_against_the_original_reads_conv1d_weights_out_by_in(gpt2, tmp_path):
    from sinecompress.report.report import report

    out = tmp_path / "sc"
    factorize(gpt2, out, rank=8, calibration=False, method="svd")
    r = report(str(out), against=str(gpt2))
    layer = next(x for x in r["layers"] if x["name"] == "transformer.h.0.attn.c_attn")
    assert layer["shape"] == [96, 32] and 0 < layer["rel_error"] < 1  # it was refused: [32, 96] against [96, 32]


def test_inflate_refuses_another_methods_quantization_config(tmp_path):
    llama = tiny_llama(tmp_path)
    out = tmp_path / "sc"
    factorize(llama, out, rank=4, calibration=False)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(InputError, match=r"sc/config.json: its quantization_config \(quant_method 'gptq'\) is not "
                                         r"sinecompress's"):
        inflate(out, tmp_path / "dense")  # copied on, it made a dense model that no loader would take
    assert not (tmp_path / "dense").exists()
