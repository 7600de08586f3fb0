import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sinecompress import SineLowRankLinear, factorize, inflate, load
from sinecompress.io.open import open_source

from .helpers import tiny_state


def header(path):
    with safe_open(str(path), "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}, f.metadata()


def test_file_round_trip_sine(tiny_file, tmp_path):
    out = tmp_path / "c.safetensors"
    s = factorize(tiny_file, out, rank=4, omega=30.0, steps=30)
    assert [lay["name"] for lay in s["layers"]] == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"]
    shapes, meta = header(out)
    # the weight itself is gone: a zero-element placeholder stops loaders that do not know the format
    assert shapes["blocks.0.fc1.weight"] == ((0,), "F32") and shapes["blocks.0.fc1.sine_u"] == ((64, 2), "F32")
    assert shapes["blocks.0.fc1.sine_lin_u"] == ((64, 2), "F32") and shapes["blocks.0.fc1.sine_amp"] == ((64,), "F32")
    doc = json.loads(meta["sinecompress"])
    assert doc["format_version"] == 1 and doc["layers"]["blocks.0.fc1"]["omega"] == 30.0
    assert meta["format"] == "pt"
    # Everything that was not factorised is copied byte for byte.
    orig, comp = load_file(str(tiny_file)), load_file(str(out))
    for k in ("embed.weight", "blocks.0.fc1.bias", "blocks.0.norm.weight", "steps"):
        assert torch.equal(orig[k], comp[k])
    dense = tmp_path / "d.safetensors"
    inflate(out, dense)
    dshapes, _ = header(dense)
    assert dshapes == header(tiny_file)[0]
    inflated = load_file(str(dense))
    for lay in s["layers"]:
        w, w_hat = orig[lay["name"] + ".weight"], inflated[lay["name"] + ".weight"]
        err = float(torch.linalg.norm(w_hat - w) / torch.linalg.norm(w))
        assert err == pytest.approx(lay["rel_error"], rel=1e-4)
    # load() gives modules whose weights equal the inflated ones.
    loaded = load(out)
    torch.testing.assert_close(loaded["blocks.0.fc1"].dense_weight(), inflated["blocks.0.fc1.weight"])
    assert torch.equal(loaded["blocks.0.fc1"].bias.detach(), orig["blocks.0.fc1.bias"])
    assert torch.equal(loaded["embed.weight"], orig["embed.weight"])


def test_svd_method_equals_eckart_young(tiny_file, tmp_path):
    out = tmp_path / "c.safetensors"
    s = factorize(tiny_file, out, method="svd", rank=3)
    w = load_file(str(tiny_file))["blocks.0.fc1.weight"]
    sv = torch.linalg.svdvals(w)
    assert s["layers"][0]["rel_error"] == pytest.approx(float(sv[3:].norm() / sv.norm()), rel=1e-4)
    assert s["params_after"] == sum(3 * (m + n) for m, n in [(64, 24), (24, 64)] * 2)


def test_sharded_round_trip(tiny_sharded, tmp_path):
    out = tmp_path / "c"
    factorize(tiny_sharded, out, rank=4, omega=30.0, steps=10)
    assert (out / "model.safetensors").exists()
    dense = tmp_path / "d"
    inflate(out, dense)
    src_orig, src_dense = open_source(tiny_sharded), open_source(dense)
    assert src_orig.shapes == src_dense.shapes and src_orig.dtypes == src_dense.dtypes


def test_param_ratio_and_break_even(tiny_file, tmp_path):
    s = factorize(tiny_file, tmp_path / "a.safetensors", param_ratio=0.5, omega=30.0, steps=5)
    for lay in s["layers"]:
        assert lay["params_after"] <= 0.5 * lay["params_before"]
    s = factorize(tiny_file, tmp_path / "b.safetensors", rank=20, method="svd")  # break-even 64*24/88 = 17
    assert all(lay["kept_dense"] for lay in s["layers"])
    assert "blocks.0.fc1.weight" in load_file(str(tmp_path / "b.safetensors"))


def test_bf16_checkpoint_keeps_dtype(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "bf16.safetensors"
    save_file(tiny_state(dtype=torch.bfloat16), str(src))
    out = tmp_path / "c.safetensors"
    factorize(src, out, rank=4, omega=30.0, steps=5)
    dense = tmp_path / "d.safetensors"
    inflate(out, dense)
    assert header(dense)[0] == header(src)[0]


def test_same_seed_gives_identical_bytes(tiny_file, tmp_path):
    factorize(tiny_file, tmp_path / "a.safetensors", rank=4, omega=30.0, steps=10, seed=3)
    factorize(tiny_file, tmp_path / "b.safetensors", rank=4, omega=30.0, steps=10, seed=3)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_hf_directory_round_trip_loads_in_transformers(tiny_bert_dir, tmp_path):
    import transformers

    out, dense = tmp_path / "c", tmp_path / "d"
    s = factorize(tiny_bert_dir, out, rank=4, omega=30.0, fit_steps=10, calibration=False,
                  targets=[r"encoder\.layer\.\d+\.(intermediate|output)\.dense"])
    assert s["calibration"]["used"] is False and s["finetune"] is None
    assert len(s["layers"]) == 4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "sinecompress"
    assert sorted(cfg["quantization_config"]["layers"]) == sorted(lay["name"] for lay in s["layers"])
    inflate(out, dense)
    assert "quantization_config" not in json.loads((dense / "config.json").read_text())
    stock = transformers.AutoModel.from_pretrained(str(dense)).eval()
    sine = load(out)
    assert isinstance(sine.encoder.layer[0].intermediate.dense, SineLowRankLinear)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(sine(ids).last_hidden_state, stock(ids).last_hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_real_minilm_file_and_directory(tmp_path):
    """The issue's acceptance path on the real pretrained all-MiniLM-L6-v2 (fewer fit steps for speed)."""
    import transformers

    from sinecompress.io.examples import example_dir

    model_dir = example_dir("minilm")
    targets = [r"encoder\.layer\.[01]\.(intermediate|output)\.dense"]
    c_file, d_file = tmp_path / "c.safetensors", tmp_path / "d.safetensors"
    factorize(model_dir / "model.safetensors", c_file, rank=32, omega=100.0, fit_steps=20, targets=targets)
    inflate(c_file, d_file)
    assert header(d_file)[0] == header(model_dir / "model.safetensors")[0]
    assert c_file.stat().st_size < (model_dir / "model.safetensors").stat().st_size

    c_dir, d_dir = tmp_path / "c", tmp_path / "d"
    factorize("example:minilm", c_dir, rank=32, omega=100.0, fit_steps=20, finetune_steps=0, targets=targets,
              calib_samples=16, seq_len=32)  # a round trip, not a calibration test: little calibration data
    inflate(c_dir, d_dir)
    tok = transformers.AutoTokenizer.from_pretrained(str(d_dir))
    stock = transformers.AutoModel.from_pretrained(str(d_dir)).eval()
    x = tok(["a sentence about sine waves", "low-rank matrices"], return_tensors="pt", padding=True)
    with torch.no_grad():
        y = stock(**x).last_hidden_state
        torch.testing.assert_close(load(c_dir)(**x).last_hidden_state, y, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(y).all()
