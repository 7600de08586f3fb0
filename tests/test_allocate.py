import itertools

import pytest
import torch
from safetensors.torch import save_file

from sinecompress import factorize
from sinecompress.errors import UsageError
from sinecompress.pipeline.allocate import allocate, energy_share
from sinecompress.pipeline.plan import LayerPlan

from .helpers import tiny_state


def layer(name, m, n, method="svd"):
    return LayerPlan(name, (m, n), "F32", method, 1, None)


def shares_from(s):
    s2 = torch.tensor(s, dtype=torch.float64) ** 2
    return s2 / s2.sum()


def cost(lp, k):
    return k * sum(lp.shape) + (lp.shape[0] if lp.method == "sine" else 0)


def tail(share, k):
    return float(share[k:].sum())


def test_flat_spectrum_gets_more_rank_than_a_decaying_one():
    a, b = layer("flat", 40, 40), layer("steep", 40, 40)
    shares = {"flat": shares_from([1.0] * 40), "steep": shares_from([0.5 ** i for i in range(40)])}
    budget = 2 * 8 * 80  # uniform rank 8 each
    ranks = allocate([a, b], shares, budget)
    assert ranks["flat"] > 8 > ranks["steep"] >= 1
    assert sum(cost(lp, ranks[lp.name]) for lp in (a, b)) <= budget


def test_greedy_matches_brute_force_on_small_problems():
    g = torch.Generator().manual_seed(0)
    layers = [layer("a", 12, 6), layer("b", 6, 12, "sine"), layer("c", 10, 10)]
    shares = {lp.name: shares_from(sorted(torch.rand(6, generator=g).tolist(), reverse=True)) for lp in layers}
    for budget in (80, 110, 150, 190):
        ranks = allocate(layers, shares, budget)
        got = sum(tail(shares[lp.name], ranks[lp.name]) for lp in layers)
        best = min(sum(tail(shares[lp.name], k) for lp, k in zip(layers, ks))
                   for ks in itertools.product(range(1, 6), repeat=3)
                   if sum(cost(lp, k) for lp, k in zip(layers, ks)) <= budget
                   and all(cost(lp, k) < lp.shape[0] * lp.shape[1] for lp, k in zip(layers, ks)))
        assert sum(cost(lp, ranks[lp.name]) for lp in layers) <= budget
        assert got <= best + 0.15 * max(best, 1e-9) + 1e-12  # greedy: optimal up to the budget's last step


def test_ranks_stay_below_break_even():
    lp = layer("a", 8, 8)
    ranks = allocate([lp], {"a": shares_from([1.0] * 8)}, 10_000)
    assert cost(lp, ranks["a"]) < 64


def test_budget_below_rank_one_is_a_clear_error():
    with pytest.raises(UsageError, match="raise --param-ratio"):
        allocate([layer("a", 10, 10)], {"a": shares_from([1.0] * 10)}, 5)


def test_energy_share_whitened_uses_the_gram():
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    plain, whitened = energy_share(w), energy_share(w, torch.diag(torch.tensor([100.0, 1, 1, 1])))
    assert torch.isclose(plain.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert not torch.allclose(plain, whitened)


def test_factorize_sensitivity_keeps_the_uniform_budget(tmp_path):
    sd = tiny_state()
    sd["blocks.1.fc1.weight"] = torch.randn(64, 2) @ torch.randn(2, 24) / 5  # nearly rank 2: needs little
    src = tmp_path / "m.safetensors"
    save_file(sd, str(src))
    uni = factorize(src, tmp_path / "u.safetensors", method="svd", param_ratio=0.3)
    sens = factorize(src, tmp_path / "s.safetensors", method="svd", param_ratio=0.3, allocate="sensitivity")
    assert uni["allocation"] == {"mode": "uniform"}
    ranks = sens["allocation"]["ranks"]
    assert ranks["blocks.1.fc1"][1] < ranks["blocks.1.fc1"][0]  # the easy layer gives rank away
    assert sens["params_after"] <= uni["params_after"] == sens["allocation"]["budget"]
    by = {lay["name"]: lay for lay in sens["layers"]}
    assert by["blocks.1.fc1"]["rank"] == ranks["blocks.1.fc1"][1]
    mean = lambda s: sum(lay["rel_error"] ** 2 for lay in s["layers"])  # noqa: E731
    assert mean(sens) < mean(uni)


def test_sensitivity_needs_param_ratio(tiny_file, tmp_path):
    with pytest.raises(UsageError, match="--param-ratio"):
        factorize(tiny_file, tmp_path / "o.safetensors", method="svd", rank=4, allocate="sensitivity")
    assert not (tmp_path / "o.safetensors").exists()
    with pytest.raises(UsageError, match="--allocate must be one of uniform, sensitivity, got 'best'"):
        factorize(tiny_file, tmp_path / "o.safetensors", method="svd", rank=4, allocate="best")


def _noise_probe(model, names, batches, noise, seeds):
    """The definition ``output_sensitivity`` estimates: the distillation loss under output noise / noise²."""
    from sinecompress.calib.capture import forward_hidden
    from sinecompress.pipeline.distill import distill_loss, tokens_alike

    per_token = tokens_alike(model)
    clean = [forward_hidden(model, b) for b in batches]
    out = {}
    for name in names:
        total = 0.0
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            hook = model.get_submodule(name).register_forward_hook(
                lambda _m, _i, y, g=g: y + noise * y.pow(2).mean().sqrt() * torch.randn(y.shape, generator=g))
            total += sum(float(distill_loss(forward_hidden(model, b), c, b.get("attention_mask"), per_token))
                         for b, c in zip(batches, clean)) / len(batches)
            hook.remove()
        out[name] = total / seeds / noise**2
    return out


@torch.no_grad()
def test_output_sensitivity_is_the_noise_probe_to_first_order(tmp_path):
    from transformers import AutoModelForCausalLM

    from sinecompress.calib.data import load_calibration
    from sinecompress.pipeline.allocate import output_sensitivity

    from .helpers import tiny_llama

    d = tiny_llama(tmp_path, layers=2)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    batches = load_calibration(None, d, 8, 16).batches
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj",
             "model.layers.1.mlp.up_proj"]
    fast = output_sensitivity(model, names, batches * 200)  # 200 probes a batch
    slow = _noise_probe(model, names, batches, 1e-3, 200)
    for n in names:
        assert fast[n] == pytest.approx(slow[n], rel=0.1), n
    assert len({round(v, 6) for v in fast.values()}) == len(names)  # the layers are told apart


@torch.no_grad()
def test_output_sensitivity_of_an_encoder_is_its_noise_probe_by_energy(tiny_bert_dir):
    """An encoder's loss weighs tokens by energy (``distill.tokens_alike``), and so does its probe."""
    from transformers import AutoModel

    from sinecompress.calib.data import load_calibration
    from sinecompress.pipeline.allocate import output_sensitivity

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    batches = load_calibration(None, tiny_bert_dir, 8, 16).batches
    names = ["encoder.layer.0.intermediate.dense", "encoder.layer.1.output.dense"]
    fast = output_sensitivity(model, names, batches * 200)
    slow = _noise_probe(model, names, batches, 1e-3, 200)
    for n in names:
        assert fast[n] == pytest.approx(slow[n], rel=0.1), n


@torch.no_grad()
def test_output_sensitivity_in_pieces_is_the_mean_over_the_pieces(tmp_path):
    from transformers import AutoModelForCausalLM

    from sinecompress.calib.data import load_calibration
    from sinecompress.pipeline.allocate import output_sensitivity

    from .helpers import tiny_llama

    d = tiny_llama(tmp_path, layers=2)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    (batch,) = load_calibration(None, d, 4, 16).batches
    names = ["model.layers.0.mlp.gate_proj", "model.layers.1.self_attn.v_proj"]
    rows = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(4)]
    assert output_sensitivity(model, names, [batch], tokens=batch["input_ids"].shape[1]) == \
        output_sensitivity(model, names, rows, tokens=10**6)


def test_output_sensitivity_leaves_the_weights_without_gradients(tmp_path):
    from transformers import AutoModelForCausalLM

    from sinecompress.calib.data import load_calibration
    from sinecompress.pipeline.allocate import output_sensitivity

    from .helpers import tiny_llama

    d = tiny_llama(tmp_path, layers=1)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert all(p.requires_grad for p in model.parameters())
    sens = output_sensitivity(model, ["model.layers.0.mlp.up_proj"], load_calibration(None, d, 4, 16).batches)
    assert sens["model.layers.0.mlp.up_proj"] > 0
    assert all(p.grad is None for p in model.parameters())
