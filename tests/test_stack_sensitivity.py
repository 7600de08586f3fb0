"""``--allocate sensitivity`` measured block by block (``pipeline/stack_sensitivity.py``): the same numbers
as the whole-model pass, without the whole model."""

from __future__ import annotations

import pytest
import torch

import sinecompress
from sinecompress.calib.capture import capture_grams
from sinecompress.calib.data import load_calibration
from sinecompress.config import CalibrationConfig
from sinecompress.errors import OutputError
from sinecompress.io.open import open_source
from sinecompress.pipeline.allocate import energy_share, output_sensitivity
from sinecompress.pipeline.plan import LayerPlan
from sinecompress.pipeline.stack import open_stack
from sinecompress.pipeline.stack_sensitivity import final_norm, stack_sensitivity

from .helpers import leftovers, tiny_llama


@pytest.mark.parametrize("which", ["llama", "bert"])  # a final norm after the stack, and none
def test_block_by_block_sensitivity_equals_the_whole_models(which, tiny_bert_dir, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    d = tiny_llama(tmp_path, layers=3) if which == "llama" else tiny_bert_dir
    model = (AutoModelForCausalLM if which == "llama" else AutoModel).from_pretrained(str(d)).eval()
    batches = load_calibration(None, d, 40, 16).batches  # two batches, padded: pieces cross batch edges
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer" in n]
    whole = output_sensitivity(model, names, batches, seed=3)
    grams = capture_grams(model, names, batches)

    st = open_stack(open_source(d), CalibrationConfig(samples=40, seq_len=16, pack=False), "cpu")
    inside, outside = st.split([LayerPlan(n, (1, 1), "F32", "svd", 1, None) for n in names])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    shares, weights = stack_sensitivity(st, inside, "cpu", scratch, seed=3)
    assert not outside and not list(scratch.iterdir())  # every block's saved inputs are gone
    for n in names:
        assert weights[n] == pytest.approx(whole[n], rel=1e-4), n
        torch.testing.assert_close(shares[n], energy_share(model.get_submodule(n).weight, grams[n]["gram"]))
    assert len(set(weights.values())) == len(names) and min(weights.values()) > 0


def test_the_final_norm_is_the_norm_right_after_the_stack():
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    small = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 8, "intermediate_size": 16,
             "vocab_size": 20}
    llama = LlamaForCausalLM(LlamaConfig(**small))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20))
    bert = BertForMaskedLM(BertConfig(**small))
    assert final_norm(llama, "model.layers")[0] == "model.norm"
    assert final_norm(gpt2, "transformer.h")[0] == "transformer.ln_f"
    assert final_norm(bert, "bert.encoder.layer") is None  # BERT reports its last block's output as is


def small_run(**extra):
    return {"rank": None, "param_ratio": 0.6, "allocate": "sensitivity", "method": "wsvd", "finetune": "none",
            "calib_samples": 8, "seq_len": 16, **extra}


def test_a_causal_lm_is_allocated_block_by_block_without_the_whole_model(tmp_path, monkeypatch):
    from sinecompress.pipeline import factorize as fz

    d = tiny_llama(tmp_path, layers=3)
    monkeypatch.setattr(fz, "calibrate", lambda *a, **k: pytest.fail("the whole model was calibrated"))
    s = sinecompress.factorize(d, tmp_path / "out", **small_run())
    alloc = s["allocation"]
    assert alloc["mode"] == "sensitivity" and alloc["outside_stack"] == ["lm_head"]
    assert "lm_head" not in alloc["ranks"] and len(alloc["ranks"]) == 21
    assert len({after for _, after in alloc["ranks"].values()}) > 1  # the ranks were moved
    spent = sum(lay["params_after"] for lay in s["layers"] if lay["name"] in alloc["ranks"])
    assert spent <= alloc["budget"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny_llama"]  # no work directory left


def test_no_room_for_the_saved_inputs_is_an_output_error_with_nothing_left(tmp_path, monkeypatch):
    from sinecompress.pipeline import stack_sensitivity as ss

    d = tiny_llama(tmp_path, layers=2)
    monkeypatch.setattr(ss, "_saved", lambda scratch, i, j: scratch / "gone" / f"{i}-{j}")
    with pytest.raises(OutputError, match="cannot save block 0's inputs for --allocate sensitivity"):
        sinecompress.factorize(d, tmp_path / "out", **small_run())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_llama"] and not leftovers(tmp_path)
