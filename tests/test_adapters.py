"""Adapters: gradients, merge, save/load round trips, autocast, parameter counts, peft interop."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from torch import nn
from torch.autograd import gradcheck

from sinecompress.adapters import (
    AdapterConfig,
    adapter_delta_weights,
    adapter_linear,
    adapter_parameter_count,
    inject_adapters,
    iter_adapters,
    load_adapter,
    merge_adapters,
    read_adapter,
    remove_adapters,
    save_adapter,
    trainable_parameters,
    unmerge_adapters,
)
from sinecompress.errors import InputError, UsageError

F64 = torch.float64


def _factors(seed=0, shape=(2, 3, 5), out=4, r=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dtype=F64, generator=g, requires_grad=True)
    A = (torch.randn(r, shape[-1], dtype=F64, generator=g) * 0.3).requires_grad_()
    B = (torch.randn(out, r, dtype=F64, generator=g) * 0.3).requires_grad_()
    W0 = torch.randn(out, shape[-1], dtype=F64, generator=g)
    m = (torch.rand(out, dtype=F64, generator=g) + 0.5).requires_grad_()
    return x, A, B, W0, m


@pytest.mark.parametrize("sine", [True, False])
@pytest.mark.parametrize("fuse", [True, False])
def test_gradcheck_lean_function(sine, fuse):
    x, A, B, W0, _ = _factors()
    kw = {"omega": 3.0, "scale": 0.7, "sine": sine, "fuse": fuse}
    assert gradcheck(lambda x, A, B: adapter_linear(x, A, B, **kw), (x, A, B))
    assert gradcheck(lambda x, A, B: adapter_linear(x, A, B, base_weight=W0, **kw), (x, A, B))
    xd = torch.randn_like(x).requires_grad_()
    assert gradcheck(lambda x, xd, A, B: adapter_linear(x, A, B, base_weight=W0, x_delta=xd, **kw), (x, xd, A, B))


@pytest.mark.parametrize("sine", [True, False])
@pytest.mark.parametrize("dropout_input", [False, True])
def test_dora_function_matches_detached_norm_reference(sine, dropout_input):
    """The DoRA norm is a constant in backward (as in DoRA §4.3), so gradcheck applies to x and m only;
    A and B are checked against autograd through the same formula with the norm detached."""
    x, A, B, W0, m = _factors(1)
    xd = torch.randn_like(x).requires_grad_() if dropout_input else None
    kw = {"omega": 3.0, "scale": 0.7, "sine": sine, "base_weight": W0}
    Ac, Bc = A.detach(), B.detach()
    if xd is None:
        assert gradcheck(lambda x, m: adapter_linear(x, Ac, Bc, magnitude=m, **kw), (x, m))
    else:
        assert gradcheck(lambda x, xd, m: adapter_linear(x, Ac, Bc, magnitude=m, x_delta=xd, **kw), (x, xd, m))
    y = adapter_linear(x, A, B, magnitude=m, x_delta=xd, **kw)
    dw = 0.7 * (torch.sin(3.0 * (B @ A)) if sine else B @ A)
    norm = torch.linalg.vector_norm(W0 + dw, dim=1).detach()
    ref = (m / norm) * (x @ W0.T + (x if xd is None else xd) @ dw.T)
    inputs = (x, A, B, m) + (() if xd is None else (xd,))
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(y, ref)


def _mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 8, bias=False)).to(dtype)


def _perturb(model, seed=1):
    """Give the adapters non-zero B (B starts at zero, which would make every check trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_adapters(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)
            if m.dora:
                m.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn(m.out_features, generator=g))


@pytest.mark.parametrize("kind", ["lora", "dora", "sine_lora", "sine_dora"])
def test_zero_init_then_merge_equals_unmerged(kind):
    model = _mlp(F64)
    x = torch.randn(5, 12, dtype=F64)
    y0 = model(x)
    inject_adapters(model, AdapterConfig(kind=kind, r=3, omega=50.0), [r"\d+"])
    torch.testing.assert_close(model(x), y0)  # B = 0 ⇒ ΔW = 0 (sin 0 = 0); DoRA's m = ‖W0‖
    _perturb(model)
    y = model(x)
    assert not torch.allclose(y, y0)
    merge_adapters(model)
    torch.testing.assert_close(model(x), y)
    unmerge_adapters(model)
    torch.testing.assert_close(model(x), y)
    torch.testing.assert_close(model[0].base_layer.weight, _mlp(F64)[0].weight)


@pytest.mark.parametrize("kind", ["sine_lora", "dora", "sine_dora"])
def test_lean_and_naive_agree(kind):
    """The memory-lean path and autograd through the dense ΔW give the same outputs and gradients."""
    x = torch.randn(2, 7, 12, dtype=F64)
    grads, outs = [], []
    for lean in (True, False):
        model = _mlp(F64)
        inject_adapters(model, AdapterConfig(kind=kind, r=3, omega=40.0, lean=lean), [r"\d+"])
        _perturb(model)
        y = model(x)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_update_formula_and_per_module_settings():
    model = _mlp(F64)
    cfg = AdapterConfig(kind="sine_lora", r=4, alpha=8, omega=100.0,
                        rank_pattern={"2": 2}, alpha_pattern={"2": 3.0}, omega_pattern={"2": 7.0})
    assert inject_adapters(model, cfg, [r"\d+"]) == ["0", "2"]
    _perturb(model)
    a, b = model[0], model[2]
    assert (a.r, a.alpha, a.omega) == (4, 8.0, 100.0)
    assert (b.r, b.alpha, b.omega) == (2, 3.0, 7.0)
    A, B = b.lora_A.weight, b.lora_B.weight
    want = torch.sin(7.0 * B @ A) / 16 ** 0.5 * (3.0 / 2)
    torch.testing.assert_close(b.delta_weight(), want)
    # A is Kaiming-uniform(a=√5): bound 1/√in
    assert float(a.lora_A.weight.detach().abs().max()) <= 1 / 12 ** 0.5


def test_targets_use_full_match_and_fail_loudly():
    model = _mlp()
    with pytest.raises(UsageError, match="matches no nn.Linear"):
        inject_adapters(model, AdapterConfig(), ["0.weight"])
    with pytest.raises(UsageError, match="matches no nn.Linear"):
        inject_adapters(model, AdapterConfig(), ["1"])  # GELU, not a Linear
    assert inject_adapters(_mlp(), AdapterConfig(), ["0"]) == ["0"]  # "0" does not match "…0" substrings


def test_second_injection_keeps_earlier_adapters_trainable():
    model = _mlp()
    inject_adapters(model, AdapterConfig(kind="lora", r=2), ["0"])
    inject_adapters(model, AdapterConfig(kind="sine_lora", r=3), ["2"])
    assert trainable_parameters(model) == 2 * (12 + 16) + 3 * (16 + 8)
    assert [n for n, _ in iter_adapters(model)] == ["0", "2"]


def _autocast_cases():
    # bfloat16 matmul on this project's CPU (AMX) dies with SIGILL in torch's oneDNN path, so the CPU
    # check uses float16 autocast; bfloat16 is checked on CUDA.
    cases = [("cpu", torch.float16)]
    if torch.cuda.is_available():
        cases += [("cuda", torch.bfloat16), ("cuda", torch.float16)]
    return cases


@pytest.mark.parametrize("device,dtype", _autocast_cases())
@pytest.mark.parametrize("kind", ["sine_lora", "sine_dora"])
def test_phase_is_fp32_under_half_autocast(device, dtype, kind):
    """At ω = 800 a half-precision phase is off by a large fraction of a period; the lean path keeps it fp32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32)).to(device)
    inject_adapters(model, AdapterConfig(kind=kind, r=4, omega=800.0), ["0"])
    with torch.no_grad():  # phases of a few hundred radians, as after training at the paper's ω
        model[0].lora_B.weight.copy_(torch.randn(32, 4, device=device))
    x = torch.randn(8, 64, device=device)
    ref = model(x).detach()
    with torch.autocast(device, dtype=dtype), torch.no_grad():
        y = model(x)
    assert y.dtype == dtype
    assert float((y.float() - ref).norm() / ref.norm()) < 1e-2
    with torch.no_grad():  # what a half-precision phase would have cost: several % of sin's size
        A, B = model[0].lora_A.weight, model[0].lora_B.weight
        d32 = torch.sin(800.0 * (B @ A))
        dlow = torch.sin(800.0 * (B.to(dtype) @ A.to(dtype))).float()
        assert float((dlow - d32).norm() / d32.norm()) > 0.02
    with torch.autocast(device, dtype=dtype):
        model(x).float().sum().backward()
    assert model[0].lora_A.weight.grad.dtype == torch.float32
    assert torch.isfinite(model[0].lora_A.weight.grad).all()


def _llama3_8b_shapes():
    """Llama-3-8B q,k,v,up,down (out, in): hidden 4096, 8 KV heads of 128, MLP 14336, 32 layers."""
    per = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096), "self_attn.v_proj": (1024, 4096),
           "mlp.up_proj": (14336, 4096), "mlp.down_proj": (4096, 14336)}
    return {f"model.layers.{i}.{k}": s for i in range(32) for k, s in per.items()}


@pytest.mark.parametrize("kind,r,paper", [
    ("lora", 4, "7.1M"), ("lora", 8, "14.2M"), ("lora", 16, "28.3M"), ("lora", 32, "56.6M"),
    ("sine_lora", 4, "7.1M"), ("dora", 8, "14.9M"), ("sine_dora", 8, "14.9M"),
    ("dora", 16, "29.1M"), ("dora", 32, "57.4M"),
])
def test_param_counts_match_paper_llama3_8b(kind, r, paper):
    """Paper Table 2 (LoRA/sine LoRA) and Table 7 (DoRA/sine DoRA): Llama-3-8B, adapters on q,k,v,up,down.
    DoRA adds one magnitude per output row (peft's layout)."""
    n = adapter_parameter_count(_llama3_8b_shapes(), AdapterConfig(kind=kind, r=r))
    assert f"{n / 1e6:.1f}M" == paper


@pytest.mark.parametrize("r,paper", [(1, "36.9K"), (2, "73.7K"), (4, "147.5K"), (8, "294.9K")])
def test_param_counts_match_paper_roberta(r, paper):
    """Paper Table 1: RoBERTa-base (12 layers, 768 wide), adapters on query and value only."""
    shapes = {f"encoder.layer.{i}.attention.self.{k}": (768, 768) for i in range(12) for k in ("query", "value")}
    n = adapter_parameter_count(shapes, AdapterConfig(kind="sine_lora", r=r))
    assert f"{n / 1e3:.1f}K" == paper


def _tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


LLAMA_TARGETS = [r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", r"model\.layers\.\d+\.mlp\.(up|down)_proj"]


@pytest.mark.parametrize("kind", ["lora", "dora", "sine_lora", "sine_dora"])
def test_trainable_parameters_on_transformers_model(kind):
    model = _tiny_llama()
    names = inject_adapters(model, AdapterConfig(kind=kind, r=4), LLAMA_TARGETS)
    assert len(names) == 10
    shapes = {n: (m.out_features, m.in_features) for n, m in iter_adapters(model)}
    assert trainable_parameters(model) == adapter_parameter_count(shapes, AdapterConfig(kind=kind, r=4))


@pytest.mark.parametrize("kind", ["lora", "dora", "sine_lora", "sine_dora"])
def test_save_load_round_trip(tmp_path, kind):
    ids = torch.randint(0, 64, (2, 9))
    model = _tiny_llama()
    inject_adapters(model, AdapterConfig(kind=kind, r=4, omega=300.0, rank_pattern={r".*down_proj": 2}),
                    LLAMA_TARGETS)
    _perturb(model)
    y = model(ids).logits
    save_adapter(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == ("SINE_LORA" if kind.startswith("sine") else "LORA")
    assert cfg["use_dora"] == kind.endswith("dora")
    assert set(cfg["rank_pattern"].values()) == {2}
    card = (tmp_path / "ad" / "README.md").read_text()  # an adapter card, as peft writes one
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == ("sinecompress" if kind.startswith("sine") else "peft")
    assert kind.replace("_", "-") in front["tags"] and "| adapted modules | 10 |" in card
    assert f"| trainable parameters | {trainable_parameters(model):,} |" in card
    assert ("load_adapter" if kind.startswith("sine") else "PeftModel.from_pretrained") in card
    assert oct((tmp_path / "ad" / "README.md").stat().st_mode & 0o777) == oct(0o644 & ~current_umask())
    fresh = _tiny_llama()
    assert len(load_adapter(fresh, tmp_path / "ad")) == 10
    torch.testing.assert_close(fresh(ids).logits, y)
    # ΔW from disk equals the live layers' (DoRA: the directional update, without a base)
    deltas = adapter_delta_weights(tmp_path / "ad")
    for name, m in iter_adapters(model):
        torch.testing.assert_close(deltas[name], m.delta_weight())
    # merged: removing the adapters leaves plain Linear layers with the same function
    remove_adapters(fresh, merge=True)
    assert not list(iter_adapters(fresh))
    torch.testing.assert_close(fresh(ids).logits, y, rtol=1e-4, atol=1e-5)


def _save_base(model, path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(path))


@pytest.mark.parametrize("kind", ["sine_lora", "sine_dora"])
def test_merge_checkpoint_matches_adapted_model(tmp_path, kind):
    from safetensors.torch import load_file

    from sinecompress.adapters import merge_checkpoint

    ids = torch.randint(0, 64, (2, 9))
    base = _tiny_llama()
    _save_base(base, tmp_path / "base.safetensors")
    inject_adapters(base, AdapterConfig(kind=kind, r=4, omega=300.0), LLAMA_TARGETS)
    _perturb(base)
    y = base(ids).logits
    save_adapter(base, tmp_path / "ad")
    summary = merge_checkpoint(tmp_path / "base.safetensors", tmp_path / "ad", tmp_path / "merged.safetensors")
    assert len(summary["merged_modules"]) == 10
    plain = _tiny_llama()
    plain.load_state_dict(load_file(str(tmp_path / "merged.safetensors")), strict=False)
    torch.testing.assert_close(plain(ids).logits, y, rtol=1e-4, atol=1e-5)
    if kind == "sine_dora":  # with the base, DoRA's ΔW is exactly merged − W0
        deltas = adapter_delta_weights(tmp_path / "ad", base=tmp_path / "base.safetensors")
        name = "model.layers.0.mlp.up_proj"
        want = plain.get_submodule(name).weight - _tiny_llama().get_submodule(name).weight
        torch.testing.assert_close(deltas[name], want, rtol=1e-4, atol=1e-6)
    with pytest.raises(UsageError, match="already exists"):
        merge_checkpoint(tmp_path / "base.safetensors", tmp_path / "ad", tmp_path / "merged.safetensors")


def test_read_adapter_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such adapter directory"):
        read_adapter(tmp_path / "nope")
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text("{not json")
    (tmp_path / "ad" / "adapter_model.safetensors").write_bytes(b"\0" * 4)
    with pytest.raises(InputError, match="not valid JSON"):
        read_adapter(tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(InputError, match="safetensors"):
        read_adapter(tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(InputError, match="not supported"):
        read_adapter(tmp_path / "ad")


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_interop_round_trip(tmp_path, use_dora):
    """Our plain LoRA/DoRA files load into peft and give the same outputs; peft's load into ours."""
    peft = pytest.importorskip("peft")
    ids = torch.randint(0, 64, (2, 9))
    ours = _tiny_llama()
    inject_adapters(ours, AdapterConfig(kind="dora" if use_dora else "lora", r=4, alpha=8), LLAMA_TARGETS)
    _perturb(ours)
    y = ours(ids).logits
    save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(_tiny_llama(), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(theirs(ids).logits, y)
    # and back: peft writes, we read
    theirs.save_pretrained(str(tmp_path / "peft"))
    back = _tiny_llama()
    load_adapter(back, tmp_path / "peft")
    torch.testing.assert_close(back(ids).logits, y)



def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
