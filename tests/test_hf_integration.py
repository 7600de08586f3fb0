"""Compressed directories in stock transformers / sentence-transformers (hf_quantizer.py), save(), weight cache."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors import safe_open

import sinecompress
from sinecompress import factorize
from sinecompress.errors import InputError
from sinecompress.io.examples import example_dir
from sinecompress.nn.checkpoint_layers import CompressedLowRankLinear, CompressedSineLinear
from sinecompress.nn.layers import SineLowRankLinear

from .helpers import ROOT, run_cli

MLP = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="session")
def st_bert(tmp_path_factory):
    """A tiny random BERT laid out as a sentence-transformers directory (MiniLM's tokenizer and pooling)."""
    d = tmp_path_factory.mktemp("st") / "dense"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(d))
    src = example_dir("minilm")
    for f in ST_FILES:
        shutil.copy(src / f, d / f)
    shutil.copytree(src / "1_Pooling", d / "1_Pooling")
    return d


@pytest.fixture(scope="session")
def sine_dir(st_bert):
    out = st_bert.parent / "sine"
    factorize(st_bert, out, rank=4, omega=30.0, steps=5, calibration=False, targets=[MLP])
    return out


@pytest.fixture(scope="session")
def svd_dir(st_bert):
    out = st_bert.parent / "svd"
    factorize(st_bert, out, method="svd", rank=4, calibration=False, targets=[MLP])
    return out


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A tiny Llama saved with save_pretrained and compressed with the CLI."""
    root = tmp_path_factory.mktemp("llama")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(root / "dense"))
    r = run_cli("factorize", root / "dense", "--rank", "8", "--omega", "30", "--no-calib", "--fit-steps", "5",
                "--target", r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj", "--out", root / "sine")
    assert r.returncode == 0, r.stderr
    return root / "sine"


def ids(vocab=100, seed=0):
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


def hidden(model, x):
    with torch.no_grad():
        return model(x).last_hidden_state


def no_key_problems(info):
    return not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"] or info["error_msgs"])


@pytest.mark.parametrize("kind", ["sine", "svd"])
def test_automodel_equals_load(kind, sine_dir, svd_dir):
    d = sine_dir if kind == "sine" else svd_dir
    cfg = json.loads((d / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "sinecompress" and len(cfg["layers"]) == 4
    model, info = transformers.AutoModel.from_pretrained(str(d), output_loading_info=True)
    assert no_key_problems(info), info
    layer = model.encoder.layer[1].output.dense
    assert isinstance(layer, CompressedSineLinear if kind == "sine" else CompressedLowRankLinear)
    assert model.config.quantization_config.quant_method == "sinecompress"
    assert torch.equal(hidden(model, ids()), hidden(sinecompress.load(d), ids()))
    assert model.half().encoder.layer[0].intermediate.dense.u.dtype == torch.float16  # factors cast like weights


def test_causal_lm_from_cli_directory(llama_dir):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(llama_dir), output_loading_info=True)
    assert no_key_problems(info), info
    ref = sinecompress.load(llama_dir)
    x = ids(128)
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
        gen = dict(max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(x), pad_token_id=0)
        assert torch.equal(model.generate(x, **gen), ref.generate(x, **gen))
    # The base model (no "model." prefix) loads the same layers from the ForCausalLM checkpoint.
    base, info = transformers.AutoModel.from_pretrained(str(llama_dir), output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"lm_head.weight"}  # the head the base model has no use for (a list in 4.x)
    assert no_key_problems(dict(info, unexpected_keys=set())), info
    assert isinstance(base.layers[0].mlp.down_proj, CompressedSineLinear)
    assert torch.equal(hidden(base, x), hidden(ref.model, x))


def test_sentence_transformer_equals_load(sine_dir):
    from sentence_transformers import SentenceTransformer

    texts = ["a sentence about sine waves", "low-rank matrices", "a third, longer sentence for padding"]
    st = SentenceTransformer(str(sine_dir), device="cpu")
    assert isinstance(st[0].auto_model.encoder.layer[0].intermediate.dense, CompressedSineLinear)
    got = st.encode(texts, convert_to_tensor=True)
    st[0].model = sinecompress.load(sine_dir)  # the same pipeline, the model from sinecompress.load
    assert torch.equal(got, st.encode(texts, convert_to_tensor=True))


def test_without_import_loading_fails_loudly(sine_dir):
    """A fresh process that imports only transformers / sentence-transformers never gets random layers."""
    script = f"""
import sys
from transformers import AutoModel
from sentence_transformers import SentenceTransformer
for load in (AutoModel.from_pretrained, SentenceTransformer):
    try:
        load({str(sine_dir)!r})
    except Exception as e:
        print("FAILED", type(e).__name__, str(e)[:200])
    else:
        print("LOADED")
print("sinecompress imported:", "sinecompress" in sys.modules)
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                       cwd=str(sine_dir.parent))
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:2]] == ["FAILED", "FAILED"], r.stdout + r.stderr
    assert "ignore_mismatched_sizes" in lines[0] and lines[2] == "sinecompress imported: False"
    assert "Unknown quantization type, got sinecompress" in r.stderr  # transformers' own warning names us
    assert "torch.Size([0])" in r.stderr  # the placeholder's mismatch, in transformers' load report


def test_registration_is_lazy_and_survives_import_order(sine_dir):
    script = f"""
import sys
import sinecompress
assert "transformers.quantizers.auto" not in sys.modules, "import sinecompress loaded the quantizer registry"
from transformers import AutoModel
m = AutoModel.from_pretrained({str(sine_dir)!r})
print(type(m.encoder.layer[0].intermediate.dense).__name__)
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.split() == ["CompressedSineLinear"], r.stderr
    # Here transformers' registry was imported long before this test: registration happened at import time.
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZER_MAPPING["sinecompress"].__name__ == "SineCompressHfQuantizer"


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_round_trip_from_load_and_from_pretrained(sine_dir, tmp_path):
    x = ids()
    for i, model in enumerate([sinecompress.load(sine_dir), transformers.AutoModel.from_pretrained(str(sine_dir))]):
        out = sinecompress.save(model, tmp_path / f"s{i}")
        again = sinecompress.load(out)
        assert _same_state(model, again) and torch.equal(hidden(model, x), hidden(again, x))
        assert torch.equal(hidden(transformers.AutoModel.from_pretrained(str(out)), x), hidden(model, x))
    # The factors are written byte for byte: the re-saved tensors equal the factorize output's.
    with safe_open(str(sine_dir / "model.safetensors"), "pt") as a, safe_open(str(tmp_path / "s0" / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
        assert json.loads(b.metadata()["sinecompress"])["layers"].keys() == json.loads(a.metadata()["sinecompress"])["layers"].keys()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_save_pretrained_writes_the_compressed_format(sine_dir, tmp_path):
    model = sinecompress.load(sine_dir)
    model.save_pretrained(str(tmp_path / "sp"))
    with safe_open(str(tmp_path / "sp" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert "encoder.layer.0.intermediate.dense.sine_u" in keys
        assert tuple(f.get_slice("encoder.layer.0.intermediate.dense.weight").get_shape()) == (0,)
        assert "sinecompress" in f.metadata()
    for loaded in (sinecompress.load(tmp_path / "sp"), transformers.AutoModel.from_pretrained(str(tmp_path / "sp"))):
        assert _same_state(model, loaded) and torch.equal(hidden(model, ids()), hidden(loaded, ids()))
    # A plain SineLowRankLinear (tensors named u, v, ...) swapped in after loading is saved under the format's names.
    old = model.encoder.layer[0].output.dense
    plain = SineLowRankLinear(old.in_features, old.out_features, old.rank, old.omega, linear_rank=old.linear_rank)
    plain.load_factors({k: getattr(old, k).detach() for k in ("u", "v", "amp", "lin_u", "lin_v")})
    with torch.no_grad():
        plain.bias.copy_(old.bias)
    model.encoder.layer[0].output.dense = plain
    model.save_pretrained(str(tmp_path / "sp2"))
    loaded = transformers.AutoModel.from_pretrained(str(tmp_path / "sp2"))
    assert torch.equal(hidden(model, ids()), hidden(loaded, ids()))


def test_compress_then_save_and_save_pretrained(tmp_path):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(1)
    model = transformers.BertModel(cfg).eval()
    sinecompress.compress_(model, rank=4, omega=30.0, steps=5, targets=[MLP])
    assert isinstance(model.encoder.layer[0].output.dense, SineLowRankLinear)
    x = ids()
    sinecompress.save(model, tmp_path / "a")
    model.save_pretrained(str(tmp_path / "b"))
    for d in ("a", "b"):
        for loaded in (sinecompress.load(tmp_path / d), transformers.AutoModel.from_pretrained(str(tmp_path / d))):
            assert _same_state(model, loaded) and torch.equal(hidden(model, x), hidden(loaded, x))


def test_save_plain_module_and_plain_sine_layers(tmp_path):
    """A non-transformers model with plain SineLowRankLinear layers (old names u, v, amp) saves as one file."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 16)
    model = torch.nn.Sequential(SineLowRankLinear.from_linear(lin, rank=4, omega=20.0, linear_rank=2, steps=5),
                                torch.nn.ReLU())
    out = sinecompress.save(model, tmp_path / "m.safetensors")
    with safe_open(str(out), "pt") as f:
        assert {"0.sine_u", "0.sine_lin_v", "0.weight", "0.bias"} <= set(f.keys())
    loaded = sinecompress.load(out)
    x = torch.randn(3, 24)
    assert torch.equal(loaded["0"](x), model[0](x))
    with pytest.raises(sinecompress.UsageError, match="nothing to save"):
        sinecompress.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_missing_factor_is_one_clear_error(sine_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "broken"
    shutil.copytree(sine_dir, d)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(d / "model.safetensors"))
    del sd["encoder.layer.1.output.dense.sine_v"]
    save_file(sd, str(d / "model.safetensors"), metadata=meta)
    with pytest.raises(InputError, match=r"encoder\.layer\.1\.output\.dense\.sine_v: missing"):
        transformers.AutoModel.from_pretrained(str(d))


def test_missing_factor_reported_by_a_transformers_4_load_is_the_same_error(sine_dir):
    """transformers 4.x gives the quantizer no checkpoint files before loading, only the keys found missing
    after (``update_missing_keys``, which 5.x no longer calls): that path raises the same error."""
    from sinecompress.integrations.hf_quantizer import SineCompressConfig, SineCompressHfQuantizer

    cfg = json.loads((sine_dir / "config.json").read_text())["quantization_config"]
    q = SineCompressHfQuantizer(SineCompressConfig(**cfg), pre_quantized=True)
    assert q.update_missing_keys(None, ["pooler.dense.bias"], "bert") == ["pooler.dense.bias"]
    for key in ("encoder.layer.1.output.dense.sine_v", "bert.encoder.layer.1.output.dense.sine_v"):
        with pytest.raises(InputError, match=r"encoder\.layer\.1\.output\.dense\.sine_v: missing from the checkpoint"):
            q.update_missing_keys(None, [key], "bert")


def test_prefixed_class_and_layer_missing_from_model(sine_dir, tmp_path):
    # A head model (prefix "bert.") finds the layers the base model's checkpoint lists.
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(str(sine_dir))
    assert isinstance(mlm.bert.encoder.layer[1].output.dense, CompressedSineLinear)
    # A listed layer the model lacks stops the load, naming the layer.
    d = tmp_path / "fewer_layers"
    shutil.copytree(sine_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"'encoder\.layer\.1\.intermediate\.dense' is not in BertModel"):
        transformers.AutoModel.from_pretrained(str(d))


def test_dequantize_gives_dense_linears(sine_dir):
    model = transformers.AutoModel.from_pretrained(str(sine_dir))
    want = hidden(model, ids())
    model.dequantize()
    assert type(model.encoder.layer[0].intermediate.dense) is torch.nn.Linear
    assert getattr(model.config, "quantization_config", None) is None
    assert torch.equal(hidden(model, ids()), want)  # nn.Linear holds the very Ŵ the sine layer multiplied by


def test_weight_cache_is_exact_and_follows_the_factors():
    torch.manual_seed(0)
    layer = SineLowRankLinear(24, 16, 4, 30.0, linear_rank=2)
    with torch.no_grad():
        layer.lin_u.normal_()
        layer.lin_v.normal_()
    x = torch.randn(5, 24)
    layer.eval()
    want = layer(x).detach()
    layer.cache_weight()
    with torch.no_grad():
        assert torch.equal(layer(x), want) and layer._cache is not None
        cached = layer._cache[1]
        assert torch.equal(layer(x), want) and layer._cache[1] is cached  # built once
        layer.u.mul_(1.5)  # an in-place change of a factor is seen
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.dense_weight(), layer.bias))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        state["v"] += 0.1
        layer.load_state_dict(state)  # load_state_dict is seen
        fresh = torch.nn.functional.linear(x, layer.dense_weight(), layer.bias)
        assert torch.equal(layer(x), fresh)
    with torch.inference_mode():
        assert torch.equal(layer(x), fresh)
    # Outside no_grad with trainable factors the cache is bypassed: gradients still reach the factors.
    layer(x).sum().backward()
    assert layer.u.grad is not None and layer.amp.grad is not None
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt.step()  # an optimizer step is seen
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.dense_weight(), layer.bias))
        assert layer._cache is not None
    layer.train()  # training resumes: the cache is dropped
    assert layer._cache is None


def test_load_with_cached_weights(sine_dir):
    plain, cached = sinecompress.load(sine_dir), sinecompress.load(sine_dir, cache_weights=True)
    assert torch.equal(hidden(plain, ids()), hidden(cached, ids()))
    assert cached.encoder.layer[0].intermediate.dense._cache is not None
    model = transformers.AutoModel.from_pretrained(str(sine_dir))
    assert sinecompress.cache_weights(model) == 4
    assert torch.equal(hidden(model, ids()), hidden(plain, ids()))
