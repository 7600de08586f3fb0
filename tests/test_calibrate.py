"""Calibration data, activation capture, and factorize with calibration on a tiny BERT and on MiniLM."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from sinecompress import factorize
from sinecompress.calib.capture import capture_grams
from sinecompress.calib.data import load_calibration
from sinecompress.calib.text import builtin_texts, read_texts
from sinecompress.errors import InputError
from sinecompress.fit.omega import AUTO_OMEGA

from .helpers import assert_one_line_error, cli

MLP = [r".*(intermediate|output)\.dense"]
NO_ATTN = [r".*attention.*"]


def test_builtin_text_is_deterministic_and_heldout_is_disjoint():
    a, b = builtin_texts("calib", 200), builtin_texts("calib", 200)
    held = builtin_texts("heldout", 200)
    assert a == b and len(a) == 200 and len(held) == 200
    assert not set(a) & set(builtin_texts("heldout"))
    assert all(30 <= len(t) <= 300 for t in a)


def test_builtin_text_ignores_what_other_libraries_patch_into_the_stdlib(monkeypatch):
    """transformers adds methods to logging.Logger; their docstrings made the text depend on what had been
    imported (1,849 passages after importing transformers, 1,843 before)."""
    import logging

    import transformers.utils.logging  # noqa: F401  (patches logging.Logger)

    before = builtin_texts("calib")
    assert not any("TRANSFORMERS_NO_ADVISORY_WARNINGS" in t for t in before)

    def shout_once(self):
        """Shout this message to every handler, but only the first time it is seen by the patched logger."""

    shout_once.__module__ = "some_library.logging"
    monkeypatch.setattr(logging.Logger, "shout_once", shout_once, raising=False)
    assert builtin_texts("calib") == before


def test_read_texts_lines_and_jsonl(tmp_path):
    (tmp_path / "c.txt").write_text("first line\n\nsecond line\n")
    assert read_texts(tmp_path / "c.txt") == ["first line", "second line"]
    (tmp_path / "c.jsonl").write_text('{"text": "a b"}\n{"text": "c d"}\n')
    assert read_texts(tmp_path / "c.jsonl") == ["a b", "c d"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        read_texts(tmp_path / "bad.jsonl")


def test_capture_grams_matches_xtx_on_real_tokens():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, input_ids, attention_mask):
            return self.b(torch.relu(self.a(input_ids)))

    net = Net()
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    stats = capture_grams(net, ["a", "b"], [{"input_ids": x, "attention_mask": mask}])
    real = x[mask.bool()]
    assert stats["a"]["tokens"] == 8
    assert stats["a"]["gram"].dtype == torch.float32  # half the memory; the fits read it in float64 blocks
    assert torch.allclose(stats["a"]["gram"], real.T @ real, atol=1e-5)
    h = torch.relu(net.a(real))
    assert torch.allclose(stats["b"]["gram"], h.T @ h, atol=1e-5)


def test_layers_fed_the_same_tensor_share_one_gram():
    """q/k/v (and gate/up) are called on one tensor: their Gram is computed and held once, and it is the
    Gram each of them alone would get; a layer fed a different tensor keeps its own."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, input_ids, attention_mask):
            return self.o(self.q(input_ids) + self.k(input_ids) * self.v(input_ids))

    net = Net()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randn(2, 5, 4, generator=g), "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])}
               for _ in range(3)]
    both = capture_grams(net, ["q", "k", "v", "o"], batches)
    assert both["k"]["gram"] is both["q"]["gram"] and both["v"]["gram"] is both["q"]["gram"]
    assert both["o"]["gram"] is not both["q"]["gram"]
    for name in ("k", "v", "o"):
        alone = capture_grams(net, [name], batches)[name]
        assert both[name]["tokens"] == alone["tokens"] == 21
        assert torch.equal(both[name]["gram"], alone["gram"])


def test_safetensors_calibration_inputs(tmp_path):
    from safetensors.torch import save_file

    save_file({"input_ids": torch.zeros(10, 7, dtype=torch.long), "attention_mask": torch.ones(10, 7, dtype=torch.long)},
              str(tmp_path / "c.safetensors"))
    data = load_calibration(tmp_path / "c.safetensors", None, samples=6, seq_len=0, batch_size=4)
    assert data.samples == 6 and data.batches[0]["input_ids"].shape == (4, 7)


def test_factorize_sine_with_calibration_records_omega_and_errors(tiny_bert_dir, tmp_path):
    s = factorize(tiny_bert_dir, tmp_path / "o", method="sine", rank=8, omega="auto", targets=MLP, exclude=NO_ATTN,
                  fit_steps=20, finetune="global", finetune_steps=3, calib_samples=16, seq_len=32, seed=1)
    assert s["calibration"]["used"] and s["calibration"]["samples"] == 16
    assert s["finetune"]["steps"] == 3
    for layer in s["layers"]:
        assert layer["omega"] == AUTO_OMEGA
        assert 0 < layer["act_error"] < 1.5 and layer["rel_error"] > 0
    with safe_open(str(tmp_path / "o" / "model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["sinecompress"])
    assert all(rec["omega"] == AUTO_OMEGA for rec in meta["layers"].values())


def test_wsvd_beats_svd_in_activation_error(tiny_bert_dir, tmp_path):
    common = dict(rank=6, targets=MLP, exclude=NO_ATTN, calib_samples=32, seq_len=32, finetune_steps=0)
    svd = factorize(tiny_bert_dir, tmp_path / "s", method="svd", **common)
    wsvd = factorize(tiny_bert_dir, tmp_path / "w", method="wsvd", **common)
    for a, b in zip(svd["layers"], wsvd["layers"]):
        assert b["act_error"] < a["act_error"]


def test_factorize_is_deterministic(tiny_bert_dir, tmp_path):
    kw = dict(method="sine", rank=6, omega=100.0, targets=MLP, exclude=NO_ATTN, fit_steps=10, finetune_steps=2,
              calib_samples=16, seq_len=32, seed=5)
    factorize(tiny_bert_dir, tmp_path / "a", **kw)
    factorize(tiny_bert_dir, tmp_path / "b", **kw)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_cli_json_and_no_calib(tiny_bert_dir, tmp_path):
    code, out, err = cli("factorize", tiny_bert_dir, "--rank", "6", "--target", MLP[0], "--exclude", NO_ATTN[0], "--out",
                         tmp_path / "o", "--no-calib", "--omega", "100", "--fit-steps", "10", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["calibration"]["used"] is False and "--no-calib" in s["calibration"]["note"]
    assert all(layer["act_error"] is None and layer["omega"] == 100.0 for layer in s["layers"])


def test_cli_wsvd_without_calibration_is_a_usage_error(tiny_bert_dir, tmp_path):
    code, _, err = cli("factorize", tiny_bert_dir, "--rank", "6", "--target", MLP[0], "--out", tmp_path / "o",
                       "--method", "wsvd", "--no-calib")
    assert_one_line_error(code, err, 2, "wsvd needs calibration")
    assert not (tmp_path / "o").exists()


def test_cli_bad_calib_file_is_an_input_error(tiny_bert_dir, tmp_path):
    (tmp_path / "c.jsonl").write_text("not json\n")
    code, _, err = cli("factorize", tiny_bert_dir, "--rank", "6", "--target", MLP[0], "--out", tmp_path / "o",
                       "--calib", tmp_path / "c.jsonl")
    assert_one_line_error(code, err, 3, "c.jsonl:1")


@pytest.mark.slow
def test_minilm_calibrated_fit_beats_svd_on_a_few_layers(tmp_path):
    targets = [r"encoder\.layer\.0\.(intermediate|output)\.dense"]
    common = dict(rank=16, targets=targets, calib_samples=16, seq_len=32, fit_steps=10)
    svd = factorize("example:minilm", tmp_path / "s", method="svd", finetune_steps=0, **common)
    sine = factorize("example:minilm", tmp_path / "t", method="sine", omega=100.0, finetune_steps=2, **common)
    assert sine["calibration"]["used"]
    for a, b in zip(svd["layers"], sine["layers"]):
        assert b["act_error"] < a["act_error"]


def test_sensitivity_allocation_with_calibration_weights_layers(tiny_bert_dir, tmp_path):
    common = dict(method="wsvd", param_ratio=0.3, targets=MLP, exclude=NO_ATTN, calib_samples=16, seq_len=32,
                  finetune_steps=0)
    uni = factorize(tiny_bert_dir, tmp_path / "u", **common)
    sens = factorize(tiny_bert_dir, tmp_path / "s", allocate="sensitivity", **common)
    alloc = sens["allocation"]
    assert alloc["mode"] == "sensitivity" and set(alloc["weights"]) == set(alloc["ranks"])
    assert all(w > 0 for w in alloc["weights"].values())
    assert sens["params_after"] <= uni["params_after"] == alloc["budget"]
    assert {lay["name"]: lay["rank"] for lay in sens["layers"]} == {n: r[1] for n, r in alloc["ranks"].items()}


def test_cli_allocate_flag(tiny_bert_dir, tmp_path):
    code, out, err = cli("factorize", tiny_bert_dir, "--param-ratio", "0.3", "--allocate", "sensitivity", "--method", "svd",
                         "--target", MLP[0], "--exclude", NO_ATTN[0], "--out", tmp_path / "o", "--no-calib", "--json")
    assert code == 0, err
    assert json.loads(out)["allocation"]["weights"] is None  # no calibration: spectra alone
    code, _, err = cli("factorize", tiny_bert_dir, "--rank", "4", "--allocate", "sensitivity", "--target", MLP[0],
                       "--out", tmp_path / "b", "--no-calib")
    assert_one_line_error(code, err, 2, "--param-ratio")
    assert not (tmp_path / "b").exists()


def test_real_rows_in_blocks_are_the_real_tokens():
    from sinecompress.calib.capture import _real_rows, real_tokens

    x = torch.randn(3, 7, 4, dtype=torch.float64)
    mask = torch.rand(3, 7) > 0.4
    blocks = list(_real_rows(x, mask, rows=4))
    assert len(blocks) == 6 and all(b.dtype == torch.float32 for b in blocks)
    assert torch.equal(torch.cat(blocks), real_tokens(x, mask).float())
    assert torch.equal(torch.cat(list(_real_rows(x, None, rows=5))), x.reshape(-1, 4).float())


def test_packed_rows_are_the_joined_text_cut_into_full_rows(tmp_path):
    from transformers import AutoTokenizer

    from sinecompress.calib.data import packed_batches
    from sinecompress.calib.text import SEPARATOR

    from .helpers import tiny_llama

    tok = AutoTokenizer.from_pretrained(str(tiny_llama(tmp_path)))
    texts = ["the of and to in is", "that it for on with", "as was by be this are from"]
    stream = tok(SEPARATOR.join(texts))["input_ids"]
    batches = packed_batches(tok, texts, rows=3, seq_len=5, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 5), (1, 5)]
    ids = torch.cat([b["input_ids"] for b in batches]).reshape(-1).tolist()
    assert ids == stream[:15] and all(bool(b["attention_mask"].all()) for b in batches)
    short = packed_batches(tok, texts[:1], rows=4, seq_len=64)  # shorter than a row: one shorter row
    assert short[0]["input_ids"].reshape(-1).tolist() == tok(texts[0])["input_ids"]


def test_causal_lms_calibrate_on_packed_rows_and_encoders_on_texts(tmp_path, tiny_bert_dir):
    from sinecompress.config import CalibrationConfig
    from sinecompress.io.open import open_source
    from sinecompress.pipeline.calibrate import calibration_data

    from .helpers import tiny_llama

    lm = open_source(tiny_llama(tmp_path))
    data = calibration_data(lm, CalibrationConfig(samples=6, seq_len=16))
    assert "packed into 6 rows of 16 tokens" in data.description
    assert [tuple(b["input_ids"].shape) for b in data.batches] == [(6, 16)]
    unpacked = calibration_data(lm, CalibrationConfig(samples=6, seq_len=16, pack=False))
    assert unpacked.description.endswith("(6 texts)") and unpacked.samples == 6
    enc = calibration_data(open_source(tiny_bert_dir), CalibrationConfig(samples=6, seq_len=16))
    assert enc.description.endswith("(6 texts)")
    forced = calibration_data(open_source(tiny_bert_dir), CalibrationConfig(samples=6, seq_len=16, pack=True))
    assert "packed" in forced.description


def test_is_causal_lm_dir_reads_the_config_and_is_false_without_one(tmp_path, tiny_bert_dir):
    from sinecompress.io.hf_model import is_causal_lm_dir

    from .helpers import tiny_llama

    assert is_causal_lm_dir(tiny_llama(tmp_path / "lm"))
    assert not is_causal_lm_dir(tiny_bert_dir)
    assert not is_causal_lm_dir(tmp_path)  # no config.json
    assert not is_causal_lm_dir(None)


def test_calib_pack_with_a_tensor_file_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    from .helpers import tiny_llama

    d = tiny_llama(tmp_path)
    save_file({"input_ids": torch.ones(2, 4, dtype=torch.long)}, str(tmp_path / "in.safetensors"))
    code, _, err = cli("factorize", d, "--rank", "2", "--calib", tmp_path / "in.safetensors", "--calib-pack",
                       "--out", tmp_path / "out")
    assert_one_line_error(code, err, 3, "in.safetensors", "--calib-pack")
    assert not (tmp_path / "out").exists()


def test_an_empty_text_file_packs_to_a_one_line_error(tmp_path):
    from .helpers import tiny_llama

    d = tiny_llama(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, err = cli("factorize", d, "--rank", "2", "--calib", tmp_path / "empty.txt", "--out", tmp_path / "out")
    assert code != 0 and "empty.txt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_auto_samples_take_all_the_builtin_texts_for_a_whole_model_tune_of_an_encoder(tmp_path, tiny_bert_dir):
    from sinecompress.calib.text import builtin_texts
    from sinecompress.config import CalibrationConfig
    from sinecompress.io.open import open_source
    from sinecompress.pipeline.calibrate import calibration_data

    from .helpers import tiny_llama

    enc, auto = open_source(tiny_bert_dir), CalibrationConfig(seq_len=16)
    everything = len(builtin_texts("calib"))
    assert 256 < everything <= 2048
    assert calibration_data(enc, auto, whole_model=True).samples == everything
    assert calibration_data(enc, auto).samples == 256  # block by block: every block reruns every row
    packed = calibration_data(open_source(tiny_llama(tmp_path)), auto, whole_model=True)
    assert packed.samples == 256 and "packed into 256 rows" in packed.description
