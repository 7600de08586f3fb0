"""Calibration data, activation capture, and factorize with calibration on a tiny BERT and on MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sinecompress.calib.capture import capture_grams
from sinecompress.calib.data import load_calibration
from sinecompress.calib.text import read_texts
from sinecompress.errors import InputError
from sinecompress import factorize

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_bert_dir  # noqa: E402

MLP = [r".*(intermediate|output)\.dense"]
NO_ATTN = [r".*attention.*"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny"))


def test_builtin_text_is_deterministic_and_heldout_is_disjoint():
    from sinecompress.calib.text import builtin_texts

    a, b = builtin_texts("calib", 200), builtin_texts("calib", 200)
    held = builtin_texts("heldout", 200)
    assert a == b and len(a) == 200 and len(held) == 200
    assert not set(a) & set(builtin_texts("heldout"))
    assert all(30 <= len(t) <= 300 for t in a)


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
    assert torch.allclose(stats["a"]["gram"], (real.T @ real).double(), atol=1e-5)
    h = torch.relu(net.a(real))
    assert torch.allclose(stats["b"]["gram"], (h.T @ h).double(), atol=1e-5)


def test_safetensors_calibration_inputs(tmp_path):
    from safetensors.torch import save_file

    save_file({"input_ids": torch.zeros(10, 7, dtype=torch.long), "attention_mask": torch.ones(10, 7, dtype=torch.long)},
              str(tmp_path / "c.safetensors"))
    data = load_calibration(tmp_path / "c.safetensors", None, samples=6, seq_len=0, batch_size=4)
    assert data.samples == 6 and data.batches[0]["input_ids"].shape == (4, 7)


def test_factorize_sine_with_calibration_records_omega_and_errors(tiny, tmp_path):
    s = factorize(tiny, tmp_path / "o", method="sine", rank=8, omega="auto", targets=MLP, exclude=NO_ATTN,
                  steps=20, ft_steps=3, calib_samples=16, seq_len=32, seed=1)
    assert s["calibration"]["used"] and s["calibration"]["samples"] == 16
    assert s["finetune"]["steps"] == 3
    for layer in s["layers"]:
        assert layer["omega"] in (30.0, 100.0, 300.0)
        assert set(layer["omega_trials"]) == {"30", "100", "300"}
        assert 0 < layer["act_error"] < 1.5 and layer["rel_error"] > 0
    meta = json.loads(__import__("safetensors").safe_open(str(tmp_path / "o" / "model.safetensors"), "pt")
                      .metadata()["sinecompress"])
    assert all(rec["omega"] in (30.0, 100.0, 300.0) for rec in meta["layers"].values())


def test_wsvd_beats_svd_in_activation_error(tiny, tmp_path):
    common = dict(rank=6, targets=MLP, exclude=NO_ATTN, calib_samples=32, seq_len=32)
    svd = factorize(tiny, tmp_path / "s", method="svd", **common)
    wsvd = factorize(tiny, tmp_path / "w", method="wsvd", **common)
    for a, b in zip(svd["layers"], wsvd["layers"]):
        assert b["act_error"] < a["act_error"]


def test_factorize_is_deterministic(tiny, tmp_path):
    kw = dict(method="sine", rank=6, omega=100.0, targets=MLP, exclude=NO_ATTN, steps=10, ft_steps=2,
              calib_samples=16, seq_len=32, seed=5)
    factorize(tiny, tmp_path / "a", **kw)
    factorize(tiny, tmp_path / "b", **kw)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sinecompress", *args], capture_output=True, text=True, env=env)


def test_cli_json_and_no_calib(tiny, tmp_path):
    r = _cli("factorize", str(tiny), "--rank", "6", "--target", MLP[0], "--exclude", NO_ATTN[0], "--out",
             str(tmp_path / "o"), "--no-calib", "--omega", "100", "--fit-steps", "10", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["calibration"]["used"] is False and "--no-calib" in s["calibration"]["note"]
    assert all(layer["act_error"] is None and layer["omega"] == 100.0 for layer in s["layers"])


def test_cli_wsvd_without_calibration_is_a_usage_error(tiny, tmp_path):
    r = _cli("factorize", str(tiny), "--rank", "6", "--target", MLP[0], "--out", str(tmp_path / "o"),
             "--method", "wsvd", "--no-calib")
    assert r.returncode == 2 and "wsvd needs calibration" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_bad_calib_file_is_an_input_error(tiny, tmp_path):
    (tmp_path / "c.jsonl").write_text("not json\n")
    r = _cli("factorize", str(tiny), "--rank", "6", "--target", MLP[0], "--out", str(tmp_path / "o"),
             "--calib", str(tmp_path / "c.jsonl"))
    assert r.returncode == 3 and "c.jsonl:1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_minilm_calibrated_fit_beats_svd_on_a_few_layers(tmp_path):
    targets = [r"encoder\.layer\.0\.(intermediate|output)\.dense"]
    common = dict(rank=16, targets=targets, calib_samples=16, seq_len=32, steps=10)
    svd = factorize("example:minilm", tmp_path / "s", method="svd", **common)
    sine = factorize("example:minilm", tmp_path / "t", method="sine", omega=100.0, ft_steps=2, **common)
    assert sine["calibration"]["used"]
    for a, b in zip(svd["layers"], sine["layers"]):
        assert b["act_error"] < a["act_error"]


def test_sensitivity_allocation_with_calibration_weights_layers(tiny, tmp_path):
    common = dict(method="wsvd", param_ratio=0.3, targets=MLP, exclude=NO_ATTN, calib_samples=16, seq_len=32)
    uni = factorize(tiny, tmp_path / "u", **common)
    sens = factorize(tiny, tmp_path / "s", allocate="sensitivity", **common)
    alloc = sens["allocation"]
    assert alloc["mode"] == "sensitivity" and set(alloc["weights"]) == set(alloc["ranks"])
    assert all(w > 0 for w in alloc["weights"].values())
    assert sens["params_after"] <= uni["params_after"] == alloc["budget"]
    assert {lay["name"]: lay["rank"] for lay in sens["layers"]} == {n: r[1] for n, r in alloc["ranks"].items()}


def test_cli_allocate_flag(tiny, tmp_path):
    r = _cli("factorize", str(tiny), "--param-ratio", "0.3", "--allocate", "sensitivity", "--method", "svd",
             "--target", MLP[0], "--exclude", NO_ATTN[0], "--out", str(tmp_path / "o"), "--no-calib", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["allocation"]["weights"] is None  # no calibration: spectra alone
    bad = _cli("factorize", str(tiny), "--rank", "4", "--allocate", "sensitivity", "--target", MLP[0],
               "--out", str(tmp_path / "b"), "--no-calib")
    assert bad.returncode != 0 and "--param-ratio" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
