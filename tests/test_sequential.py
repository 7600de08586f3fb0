"""Sequential fitting: capture what a layer sees after earlier layers were compressed, and fit to it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sinecompress import factorize
from sinecompress.calib.capture import capture_grams, capture_pair
from sinecompress.fit.whiten import chol, shifted_target, whitened_svd


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 12)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(16, 16, generator=g) / 4)
            self.b.weight.copy_(torch.randn(12, 16, generator=g) / 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(64, 16, generator=g) * torch.logspace(0, -1, 16)} for _ in range(n)]


def test_capture_pair_on_an_unchanged_model_gives_the_plain_gram():
    m = Toy()
    pair = capture_pair(m, copy.deepcopy(m), "b", batches())
    gram = capture_grams(m, ["b"], batches())["b"]["gram"]
    assert torch.allclose(pair["gram"], gram) and torch.allclose(pair["cross"], gram)
    assert pair["tokens"] == 4 * 64


def test_sequential_target_beats_the_parallel_fit_on_what_the_layer_really_sees():
    teacher, student = Toy(), Toy()
    with torch.no_grad():  # compress the first layer crudely: the second now sees shifted inputs
        u, v = whitened_svd(teacher.a.weight, torch.eye(16, dtype=torch.float64), 3)
        student.a.weight.copy_(u @ v.T)
    data = batches()
    pair = capture_pair(teacher, student, "b", data)
    w = teacher.b.weight.detach()
    seq_u, seq_v = whitened_svd(shifted_target(w, pair["gram"], pair["cross"]), chol(pair["gram"]), 4)
    par_u, par_v = whitened_svd(w, chol(capture_grams(teacher, ["b"], data)["b"]["gram"]), 4)

    def out_error(w_hat):  # ‖X̃ Ŵᵀ − X Wᵀ‖ over the calibration batches
        err = 0.0
        for b in data:
            x = torch.relu(teacher.a(b["x"]))
            xs = torch.relu(student.a(b["x"]))
            err += float(((xs @ w_hat.T - x @ w.T) ** 2).sum())
        return err

    with torch.no_grad():
        assert out_error(seq_u @ seq_v.T) < 0.9 * out_error(par_u @ par_v.T)


def test_factorize_sequential_is_recorded_and_deterministic(tiny_bert_dir, tmp_path):
    # the whole-model pipeline, where the sequential fit applies (the block-by-block one fits in order anyway)
    kw = dict(method="sine", rank=6, omega=100.0, targets=[r".*(intermediate|output)\.dense"], finetune="global",
              exclude=[r".*attention.*"], fit_steps=10, calib_samples=16, seq_len=32, seed=2)
    a = factorize(tiny_bert_dir, tmp_path / "a", finetune_steps=0, **kw)  # no fine-tune: sequential by default
    factorize(tiny_bert_dir, tmp_path / "b", finetune_steps=0, sequential=True, **kw)
    par = factorize(tiny_bert_dir, tmp_path / "p", finetune_steps=0, sequential=False, **kw)
    tuned = factorize(tiny_bert_dir, tmp_path / "t", finetune_steps=2, **kw)  # with a fine-tune: not by default
    assert a["sequential"] is True and par["sequential"] is False and tuned["sequential"] is False
    assert a["finetune"] is None and tuned["finetune"]["steps"] == 2
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert all(0 < lay["act_error"] < 1.5 for lay in a["layers"])
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "p" / "model.safetensors").read_bytes()
