"""Tiny GGUF files written with gguf.GGUFWriter the way llama.cpp's converter writes them (for tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """A gpt2-style BPE: the 256 byte characters, a few merges, and control tokens (token_type 3)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + ["".join(m) for m in MERGES] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)
    return tokens, [" ".join(m) for m in MERGES], types


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``LlamaModel.permute``: q/k rows as GGUF stores them."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               ffn: int = 96, tied: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under transformers' names and shapes."""
    rng = np.random.default_rng(seed)
    vocab = len(byte_level_vocab()[0])
    head_dim = hidden // heads
    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(hidden)}
    if not tied:
        w["lm_head.weight"] = rng.standard_normal((vocab, hidden)) / 8
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        for name, rows in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim),
                           ("v_proj", kv_heads * head_dim)):
            w[p + f"self_attn.{name}.weight"] = rng.standard_normal((rows, hidden)) / 8
            if arch == "qwen2":
                w[p + f"self_attn.{name}.bias"] = rng.standard_normal(rows) / 8
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((hidden, heads * head_dim)) / 8
        w[p + "mlp.gate_proj.weight"] = rng.standard_normal((ffn, hidden)) / 8
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((ffn, hidden)) / 8
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((hidden, ffn)) / 8
    return {k: v.astype(np.float32) for k, v in w.items()}


GGUF_LEAF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    leaf, _, kind = rest.rpartition(".")
    return f"blk.{i}.{GGUF_LEAF[leaf]}.{kind}"


def write_tiny_gguf(path: Path, arch: str = "llama", types: dict[str, str] | None = None, heads: int = 4,
                    kv_heads: int = 2, extra: dict[str, np.ndarray] | None = None, name: str = "tiny",
                    block_count: int | None = None, context_length: int = 256, tokenizer: bool = True,
                    **kw) -> dict[str, np.ndarray]:
    """Write a GGUF of ``hf_weights(arch, ...)``; ``types`` maps a GGUF leaf (``attn_q``, ``token_embd``...)
    to a ggml type name (default F32). Returns the weights written, under their transformers names.
    ``block_count`` and ``context_length`` set the metadata, e.g. to values that lie about the file;
    ``tokenizer=False`` leaves out the tokenizer metadata."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    w = hf_weights(arch, heads=heads, kv_heads=kv_heads, **kw)
    hidden = w["model.norm.weight"].shape[0]
    layers = sum(k.endswith("input_layernorm.weight") for k in w)
    tokens, merges, token_types = byte_level_vocab()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_block_count(layers if block_count is None else block_count)
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(w["model.layers.0.mlp.up_proj.weight"].shape[0])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(tokens.index("<|im_start|>"))
        writer.add_eos_token_id(tokens.index("<|im_end|>"))
        writer.add_add_bos_token(False)
        writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    types = types or {}
    for hf, arr in w.items():
        g = gguf_name(hf)
        if arch == "llama" and ".attn_q." in g:
            arr = llamacpp_permute(arr, heads)
        elif arch == "llama" and ".attn_k." in g:
            arr = llamacpp_permute(arr, kv_heads)
        leaf = g.split(".")[-2]
        qtype = Q[types.get(leaf, "F32")]
        writer.add_tensor(g, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    for g, arr in (extra or {}).items():
        writer.add_tensor(g, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return w
