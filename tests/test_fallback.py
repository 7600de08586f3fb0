"""A calibrated sine fit that ends worse than whitened SVD at the same rank keeps the whitened SVD
(``fit.fallback``, on by default; ``--no-fallback`` keeps every sine layer sine)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import sinecompress
from sinecompress.fit.sine import fit_calibrated
from sinecompress.io.format import read_metadata
from sinecompress.pipeline.fitting import fit_layer, fitted
from sinecompress.pipeline.plan import LayerPlan, Plan

from .helpers import cli, tiny_llama


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama"))


def low_rank_layer(m: int = 24, n: int = 16, true_rank: int = 3):
    """A weight of rank 3 (whitened SVD at rank 4 fits it exactly) and a full-rank Gram."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m, true_rank, generator=g) @ torch.randn(true_rank, n, generator=g)
    x = torch.randn(200, n, generator=g)
    return w, (x.T @ x).double()


def plan_of(fallback: bool, steps: int = 5) -> tuple[LayerPlan, Plan]:
    lp = LayerPlan("layer", (24, 16), "F32", "sine", 4, None, linear_rank=2)
    return lp, Plan("test", "sine", 4, None, "auto", steps=steps, fallback=fallback, layers=(lp,))


def test_the_hybrid_fit_reports_the_whitened_svd_it_starts_from():
    w, gram = low_rank_layer()
    w = w + 0.3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))  # no longer exactly rank 3
    r = fit_calibrated(w, gram, "sine", 4, 2, 100.0, steps=5)
    alone = fit_calibrated(w, gram, "wsvd", 4)
    assert r["wsvd_u"].shape == (24, 4) and r["wsvd_v"].shape == (16, 4)
    assert r["wsvd_act_error"] == pytest.approx(alone["act_error"], rel=1e-3)


def test_a_sine_fit_worse_than_whitened_svd_keeps_the_whitened_svd():
    w, gram = low_rank_layer()
    lp, plan = plan_of(fallback=True)
    f = fit_layer(w, lp, plan, gram)
    assert f["method"] == "wsvd" and f.get("amp") is None and f["u"].shape == (24, 4)
    assert f["act_error"] < 1e-4 < f["sine_act_error"]  # rank 3 is exact for the SVD, not for 5 sine steps
    stored = fitted(lp, f)
    assert (stored.kind, stored.rank, stored.linear_rank, stored.omega) == ("lowrank", 4, 0, None)
    assert stored.factored_params < lp.factored_params  # no amplitude vector: within the sine layer's budget


def test_no_fallback_keeps_the_sine_fit():
    w, gram = low_rank_layer()
    lp, plan = plan_of(fallback=False)
    f = fit_layer(w, lp, plan, gram)
    assert "method" not in f and f["amp"] is not None and fitted(lp, f) is lp


@pytest.mark.parametrize("mode", [
    ["--steps", "4"],  # block by block, each block tuned
    ["--finetune", "global", "--steps", "4"],  # all layers fitted, then the whole model tuned
    ["--finetune", "global", "--steps", "0"],  # no tune: the sequential fit
], ids=["block", "global", "sequential"])
def test_a_run_with_fallbacks_writes_a_model_that_loads_as_it_inflates(llama_dir, tmp_path, mode):
    """3 fit steps leave most sine fits worse than whitened SVD: a mixed model, which must load back,
    tune and inflate like any other; the summary and the log say which layers fell back."""
    out, dense = tmp_path / "out", tmp_path / "dense"
    code, stdout, err = cli("factorize", llama_dir, "--rank", "4", "--fit-steps", "3", *mode,
                            "--calib-samples", "8", "--seq-len", "16", "--out", out, "--json")
    assert code == 0, err
    s = json.loads(stdout)
    fell = [x for x in s["layers"] if x.get("fell_back")]
    assert fell == [x for x in s["layers"] if x["method"] == "wsvd"]
    assert fell and all(x["omega"] is None and x["linear_rank"] == 0 for x in fell)
    if mode[0] != "--finetune":  # block by block, the untied head is fitted to its weights: no Gram, no fallback
        head = next(x for x in s["layers"] if x["name"] == "lm_head")
        assert head["method"] == "sine" and head not in fell
    # a sequential fit's own error is in its shifted target's metric, so it is not reported
    assert all(("sine_act_error" in x) == (mode[-1] != "0") for x in fell)
    assert f"{len(fell)} of {len(s['layers'])} layers kept the whitened SVD" in " ".join(err.split())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = read_metadata(f.metadata(), "out")["layers"]
    assert {n for n, r in stored.items() if r["kind"] == "lowrank"} == {x["name"] for x in fell}
    sinecompress.inflate(out, dense)
    from transformers import AutoModelForCausalLM

    ids = torch.randint(5, 40, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a = sinecompress.load(out).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(str(dense)).eval()(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_no_fallback_and_the_recipe_key_keep_every_layer_sine(llama_dir, tmp_path):
    s = sinecompress.factorize(llama_dir, tmp_path / "out", rank=4, fit_steps=3, finetune="none", calib_samples=8,
                               seq_len=16, fallback=False)
    assert {x["method"] for x in s["layers"]} == {"sine"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {llama_dir}\noutput: {tmp_path / 'r'}\n"
                      "defaults: {rank: 4, fit_steps: 3, fallback: false}\n"
                      "finetune: {mode: none}\ncalibration: {samples: 8, seq_len: 16}\n")
    code, stdout, err = cli("factorize", "--recipe", recipe, "--json")
    assert code == 0, err
    assert {x["method"] for x in json.loads(stdout)["layers"]} == {"sine"}
