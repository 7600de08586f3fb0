"""The block-by-block calibrated pipeline (``--finetune block``, the default) and its siblings
``none`` and ``global``, on a tiny encoder and a tiny causal LM."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
from safetensors import safe_open

import sinecompress
from sinecompress.fit.omega import AUTO_OMEGA
from sinecompress.fit.sine import fast_bf16
from sinecompress.fit.svd import rel_error, truncated_svd
from sinecompress.io.format import read_metadata

from .helpers import cli, tiny_llama

SMALL = {"rank": 4, "steps": 3, "calib_samples": 8, "seq_len": 16}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama"))


def token_batch(n: int = 4, length: int = 12, vocab: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(5, vocab, (n, length), generator=g)


def test_the_default_settings_choose_and_record_omega_per_layer(tiny_bert_dir, tmp_path):
    """What the README command runs (ω auto, sine, block tuning), at a tiny size: each layer's ω is the
    gauge value 100 (no trial fits), kept through the block tuning into the summary and the file. (Without the
    fallback: 3 fit steps leave most sine fits worse than whitened SVD, tests/test_fallback.py.)"""
    s = sinecompress.factorize(tiny_bert_dir, tmp_path / "out", ft_steps=2, finetune="block", fallback=False, **SMALL)
    assert s["calibration"]["used"] and s["finetune"]["mode"] == "block"
    done = [x for x in s["layers"] if not x["kept_dense"]]
    assert done and all(x["omega"] == AUTO_OMEGA and "omega_trials" not in x for x in done)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        layers = read_metadata(f.metadata(), "out")["layers"]
    assert {x["name"]: x["omega"] for x in done} == {n: r["omega"] for n, r in layers.items()}


def test_block_tuning_lowers_every_blocks_loss(llama_dir, tmp_path):
    s = sinecompress.factorize(llama_dir, tmp_path / "out", ft_steps=30, **SMALL)
    blocks = s["finetune"]["blocks"]
    assert [b["block"] for b in blocks] == [0, 1]
    assert all(b["loss_end"] < b["loss_start"] for b in blocks), blocks
    # where each block's time went: its whole, its fits and its tune
    assert all(b["seconds"] >= b["fit_seconds"] + b["tune_seconds"] > 0 for b in blocks), blocks
    # and its memory: the resident set after the block is dropped, never above the peak so far, which only grows
    peaks = [b["peak_rss_mib"] for b in blocks]
    assert peaks == sorted(peaks) and peaks[-1] <= s["finetune"]["peak_rss_mib"]
    assert all(0 < b["rss_mib"] <= b["peak_rss_mib"] for b in blocks), blocks
    assert s["finetune"]["outside_stack"] == ["lm_head"]  # an untied head is a target, fitted to its weight
    # a CPU run has no GPU peak to report, in the blocks or the summary
    assert "peak_gpu_mib" not in s and not any("peak_gpu_mib" in b for b in blocks)


@pytest.mark.gpu
def test_a_cuda_block_run_reports_the_cards_peak_memory(llama_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    s = sinecompress.factorize(llama_dir, tmp_path / "out", ft_steps=5, device="cuda", **SMALL)
    blocks = s["finetune"]["blocks"]
    assert s["finetune"]["mode"] == "block" and all(b["loss_end"] <= b["loss_start"] for b in blocks)
    peaks = [b["peak_gpu_mib"]["allocated"] for b in blocks]
    assert peaks == sorted(peaks) and 0 <= peaks[-1] <= s["peak_gpu_mib"]["allocated"]
    assert s["peak_gpu_mib"]["allocated"] <= s["peak_gpu_mib"]["reserved"]
    code, _, err = cli("factorize", llama_dir, "--rank", "4", "--steps", "3", "--calib-samples", "8", "--seq-len",
                       "16", "--device", "cuda", "--out", tmp_path / "o2")
    assert code == 0 and "peak GPU memory:" in err, err


@pytest.mark.parametrize("method", ["wsvd", "sine"])
def test_a_block_run_leaves_no_tensor_to_the_cyclic_garbage_collector(llama_dir, tmp_path, method):
    """A tensor held only by a reference cycle is freed at some later GC pass, not when its block is done,
    so a deep run's peak would depend on when the collector happens to run."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable goes to gc.garbage, not away
    try:
        sinecompress.factorize(llama_dir, tmp_path / "out", method=method, ft_steps=3, **SMALL)
        gc.collect()
        tensors = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not tensors, [(tuple(t.shape), t.dtype) for t in tensors[:5]]


def test_wsvd_fits_an_untied_head_outside_the_stack_by_its_weights_svd(llama_dir, tmp_path):
    """The head sees no block's inputs, so it has no Gram: whitened SVD falls back to the weight's SVD
    (this crashed before, at the very end of a run)."""
    s = sinecompress.factorize(llama_dir, tmp_path / "out", method="wsvd", finetune="none", **SMALL)
    head = next(x for x in s["layers"] if x["name"] == "lm_head")
    assert s["finetune"]["outside_stack"] == ["lm_head"] and not head["kept_dense"]
    with safe_open(str(llama_dir / "model.safetensors"), "pt") as f:
        w = f.get_tensor("lm_head.weight").float()
    u, v = truncated_svd(w, head["rank"])
    assert head["rel_error"] == pytest.approx(rel_error(u @ v.T, w), rel=1e-4)


def test_auto_tunes_causal_lms_block_by_block_and_encoders_whole(tiny_bert_dir, llama_dir, tmp_path):
    small = {**SMALL, "ft_steps": 2, "steps": 2, "calib_samples": 4, "seq_len": 8}
    assert sinecompress.factorize(llama_dir, tmp_path / "lm", **small)["finetune"]["mode"] == "block"
    assert sinecompress.factorize(tiny_bert_dir, tmp_path / "enc", **small)["finetune"]["mode"] == "global"


def test_a_whole_model_tune_of_an_encoder_reads_all_the_builtin_text_by_default(tiny_bert_dir, tmp_path):
    """``--calib-samples auto``: every built-in text for the whole-model tune; 256 when nothing is tuned
    (the sequential fit reruns the models on every row once per layer)."""
    from sinecompress.calib.text import builtin_texts

    small = {"rank": 4, "steps": 2, "seq_len": 8}
    tuned = sinecompress.factorize(tiny_bert_dir, tmp_path / "tuned", ft_steps=2, **small)
    assert tuned["finetune"]["mode"] == "global"
    assert tuned["calibration"]["samples"] == len(builtin_texts("calib"))
    states = tuned["finetune"]["teacher_states"]
    assert states["held"] == math.ceil(len(builtin_texts("calib")) / 32) and states["recomputed"] == 0
    untuned = sinecompress.factorize(tiny_bert_dir, tmp_path / "untuned", ft_steps=0, finetune="global", **small)
    assert untuned["calibration"]["samples"] == 256 and untuned["sequential"]


@pytest.mark.parametrize("mode", ["none", "block", "global"])
def test_every_mode_writes_a_model_that_loads_as_it_inflates(llama_dir, tmp_path, mode):
    out, dense = tmp_path / "out", tmp_path / "dense"
    code, stdout, err = cli("factorize", llama_dir, "--rank", "4", "--fit-steps", "3", "--steps", "4",
                            "--calib-samples", "8", "--seq-len", "16", "--finetune", mode, "--out", out, "--json")
    assert code == 0, err
    assert "it/s" not in err and "Loading weights" not in err  # transformers' bars stay out of our log
    s = json.loads(stdout)
    assert s["calibration"]["used"]
    assert s["finetune"]["mode"] == mode
    if mode != "none":  # --lr auto: a whole-model tune of a causal LM steps 5x smaller than a block's
        assert s["finetune"]["lr"] == (1e-3 if mode == "global" else 5e-3)
        wsvd = sinecompress.factorize(llama_dir, tmp_path / "wsvd", finetune=mode, method="wsvd", **SMALL)
        assert wsvd["finetune"]["lr"] == (1e-3 if mode == "global" else 1e-2)  # a linear run's block rate
        assert s["calibration"]["gram_product"] == ("bfloat16" if fast_bf16("cpu") else "float32")
    sinecompress.inflate(out, dense)
    from transformers import AutoModelForCausalLM

    ids = token_batch()
    with torch.inference_mode():
        a = sinecompress.load(out).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(str(dense)).eval()(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_block_tuning_brings_the_model_closer_to_the_original(llama_dir, tmp_path):
    """The point of the tuning: on held-out text (never used for calibration) the tuned model's logits are
    nearer the original's than those of the same fits untuned. (Measured 0.700 → 0.687 relative error.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sinecompress.calib.text import builtin_texts

    tok = AutoTokenizer.from_pretrained(str(llama_dir))
    tok.pad_token = tok.eos_token
    enc = tok(builtin_texts("heldout", limit=8), padding=True, truncation=True, max_length=24, return_tensors="pt")
    real = enc["attention_mask"].bool()
    with torch.inference_mode():
        ref = AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval()(**enc).logits[real]
    errors = {}
    for mode in ("none", "block"):
        sinecompress.factorize(llama_dir, tmp_path / mode, finetune=mode, ft_steps=40, rank=8, steps=30,
                               calib_samples=16, seq_len=24)
        with torch.inference_mode():
            y = sinecompress.load(tmp_path / mode).eval()(**enc).logits[real]
        errors[mode] = ((y - ref).norm() / ref.norm()).item()
    assert errors["block"] < errors["none"] < 0.9, errors


def test_first_block_fits_equal_the_whole_model_path(llama_dir, tmp_path):
    """Block 0 sees the same inputs in both paths (the embeddings of the same batches), so the same Grams
    give the same fits; later blocks differ on purpose (the block path feeds them compressed outputs). Sine
    fits throughout: 3 fit steps would leave most layers to the whitened-SVD fallback."""
    sinecompress.factorize(llama_dir, tmp_path / "block", finetune="none", fallback=False, **SMALL)
    sinecompress.factorize(llama_dir, tmp_path / "whole", finetune="global", ft_steps=0, sequential=False,
                           fallback=False, **SMALL)
    with safe_open(str(tmp_path / "block" / "model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "whole" / "model.safetensors"), "pt") as b:
        first = [k for k in a.keys() if k.startswith("model.layers.0.") and ".sine_" in k]
        assert first and set(a.keys()) == set(b.keys())
        for k in first:
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-4, atol=1e-5)
        later = [k for k in a.keys() if k.startswith("model.layers.1.") and ".sine_u" in k]
        assert any(not torch.allclose(a.get_tensor(k), b.get_tensor(k)) for k in later)


def test_at_most_one_block_holds_real_weights(tmp_path, monkeypatch):
    """The memory bound, counted rather than timed: whenever a block is read, every other block of the
    stack is still (or again) empty."""
    from sinecompress.pipeline import blockwise, stack

    d = tiny_llama(tmp_path, layers=4)
    seen = []
    real_materialize = blockwise.materialize

    def spy(module, prefix, fetch, *a, **k):
        real_materialize(module, prefix, fetch, *a, **k)
        model_blocks = spy.blocks
        seen.append(sum(any(p.device.type != "meta" for p in b.parameters()) for b in model_blocks))

    real_find = stack.find_blocks

    def find(model):
        stack, blocks = real_find(model)
        spy.blocks = blocks
        return stack, blocks

    monkeypatch.setattr(blockwise, "materialize", spy)
    monkeypatch.setattr(stack, "find_blocks", find)
    sinecompress.factorize(d, tmp_path / "out", finetune="block", ft_steps=2, **SMALL)
    assert seen == [1, 1, 1, 1]


def test_each_blocks_factors_leave_memory_before_the_next_block(tmp_path, monkeypatch):
    """The other half of the memory bound: fitted factors go to the work directory block by block (they
    are the size of the compressed model), and the directory is gone once the run ends."""
    from sinecompress.pipeline import blockwise
    from sinecompress.pipeline.workdir import WorkDir

    d = tiny_llama(tmp_path, layers=3)
    events = []
    real_spill, real_materialize = WorkDir.spill, blockwise.materialize
    monkeypatch.setattr(WorkDir, "spill", lambda self, i, lp, f: events.append(lp.name) or real_spill(self, i, lp, f))
    monkeypatch.setattr(blockwise, "materialize", lambda m, prefix, *a, **k: events.append(prefix)
                        or real_materialize(m, prefix, *a, **k))
    s = sinecompress.factorize(d, tmp_path / "out", finetune="block", ft_steps=2, **SMALL)
    blocks = [i for i, e in enumerate(events) if e.startswith("model.layers.") and e.count(".") == 2]
    assert len(blocks) == 3 and events[-1] == "lm_head"  # the untied head, fitted after the stack
    for b, nxt in zip(blocks, blocks[1:] + [len(events) - 1]):
        between = events[b + 1:nxt]  # before the next block is read: this block's 7 layers, all on disk
        assert len(between) == 7 and all(e.startswith(events[b] + ".") for e in between), events
    assert s["params_after"] < s["params_before"]
    assert not any(p.name.endswith(".sc.work") for p in tmp_path.iterdir())


def test_a_failed_block_run_leaves_no_work_directory(tmp_path, monkeypatch):
    from sinecompress.pipeline import blockwise

    d = tiny_llama(tmp_path, layers=3)
    calls = []

    def broken(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in block 1")
        return real(*a, **k)

    real = blockwise.tune_block
    monkeypatch.setattr(blockwise, "tune_block", broken)
    with pytest.raises(RuntimeError, match="boom"):
        sinecompress.factorize(d, tmp_path / "out", finetune="block", ft_steps=2, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [d.name]


def test_a_killed_block_runs_leftovers_are_discarded_without_pointing_at_resume(tmp_path):
    """A block run killed outright (SIGKILL: no finally) leaves its work directory; the next run removes
    it, and its warning does not suggest --resume, which calibrated runs refuse."""
    from sinecompress.errors import SineCompressWarning
    from sinecompress.pipeline.workdir import work_path

    d = tiny_llama(tmp_path, layers=2)
    out = tmp_path / "out"
    left = work_path(out)
    left.mkdir()
    (left / "layer-00000.safetensors").write_bytes(b"")
    with pytest.warns(SineCompressWarning, match="discarding 1 fitted layers") as caught:
        sinecompress.factorize(d, out, finetune="block", ft_steps=2, **SMALL)
    assert not any("--resume" in str(w.message) for w in caught)
    assert not left.exists() and (out / "model.safetensors").exists()


def test_each_block_is_tuned_towards_the_chosen_target(llama_dir, tmp_path, monkeypatch):
    """``--tune-target model``: block i aims at what the original model's block i outputs on the original
    stream, so the tune also corrects the error the earlier compressed blocks passed on (SmolLM2 at 20 %,
    wsvd + block tuning: perplexity 117.3 → 102.9). ``block``: at the original block's output on the
    compressed stream (the sine defaults: 85.7, against 106.8 aiming at the model)."""
    from transformers import AutoModelForCausalLM

    from sinecompress.calib.blocks import block_output
    from sinecompress.pipeline import blockwise

    calls = []
    real = blockwise.tune_block

    def spy(block, modules, inputs, targets, *a, **k):
        calls.append((inputs, targets))
        return real(block, modules, inputs, targets, *a, **k)

    monkeypatch.setattr(blockwise, "tune_block", spy)
    dense = AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval()
    # auto: the original model's output for linear fits, the original block's on the same inputs for sine
    for method, target, aim in (("wsvd", "auto", "model"), ("sine", "model", "model"), ("sine", "auto", "block")):
        calls.clear()
        s = sinecompress.factorize(llama_dir, tmp_path / f"{method}-{target}", ft_steps=2, **{**SMALL, "method": method},
                                   tune_target=target)
        assert s["finetune"]["target"] == aim and len(calls) == 2
        (in0, out0), (in1, out1) = calls
        with torch.inference_mode():
            for (x, kw), t0, (x1, _), t1 in zip(in0, out0, in1, out1):
                y0 = block_output(dense.model.layers[0](x, **kw))
                y1 = block_output(dense.model.layers[1](y0 if aim == "model" else x1, **kw))
                torch.testing.assert_close(t0, y0, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(t1, y1, rtol=1e-4, atol=1e-5)
                assert not torch.allclose(x1, y0, atol=1e-3)  # block 1 itself runs on the compressed stream


def test_a_llama_blocks_q_k_v_and_gate_up_share_their_grams(llama_dir):
    """What the Gram sharing is for: a decoder block holds four Grams for its seven layers, not seven."""
    from transformers import AutoModelForCausalLM

    from sinecompress.calib.blocks import run_block

    model = AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval()
    names = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    x = torch.randn(2, 6, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(6).expand(2, 6)
    kw = {"position_embeddings": model.model.rotary_emb(x, pos), "attention_mask": None}
    _, grams = run_block(model.model.layers[0], [(x, kw)], names=names)
    assert len({id(g["gram"]) for g in grams.values()}) == 4
    assert grams["self_attn.v_proj"]["gram"] is grams["self_attn.q_proj"]["gram"]
    assert grams["mlp.up_proj"]["gram"] is grams["mlp.gate_proj"]["gram"]


def test_a_bad_tune_target_is_one_line_naming_the_flag(llama_dir, tmp_path):
    code, _, err = cli("factorize", llama_dir, "--rank", "4", "--tune-target", "teacher", "--out", tmp_path / "o")
    assert code == 2 and err.count("error:") == 1 and "--tune-target" in err and "teacher" in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra", [["--finetune", "global"], ["--finetune", "none"], ["--no-calib"]])
def test_a_tune_target_where_no_block_is_tuned_is_refused(llama_dir, tmp_path, extra):
    code, _, err = cli("factorize", llama_dir, "--rank", "4", "--tune-target", "model", *extra, "--out", tmp_path / "o")
    assert code == 2 and err.count("error:") == 1 and "--tune-target" in err and "--finetune block" in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_a_batch_run_a_few_rows_at_a_time_gives_the_whole_batchs_outputs_and_grams(which, llama_dir, tiny_bert_dir):
    from transformers import AutoModel

    from sinecompress.calib.blocks import block_inputs, run_block
    from sinecompress.nn.skeleton import find_blocks

    model = AutoModel.from_pretrained(str(llama_dir if which == "llama" else tiny_bert_dir)).eval()
    _, blocks = find_blocks(model)
    ids = token_batch(5, 7)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # padded rows: their masks and positions are per row
    mask[3, 2:] = 0
    masks = [mask]
    inputs = block_inputs(model, blocks[0], [{"input_ids": ids, "attention_mask": mask}])
    names = [n for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)]
    whole, g_whole = run_block(blocks[0], inputs, names=names, masks=masks, tokens=10**6)
    split, g_split = run_block(blocks[0], inputs, names=names, masks=masks, tokens=14)  # two rows a piece
    real = mask.bool()
    torch.testing.assert_close(split[0][real], whole[0][real], rtol=1e-5, atol=1e-5)
    for n in names:
        assert g_split[n]["tokens"] == g_whole[n]["tokens"] == int(mask.sum())
        torch.testing.assert_close(g_split[n]["gram"], g_whole[n]["gram"], rtol=1e-4, atol=1e-4)


def test_a_blocks_positional_arguments_reach_it_by_name(tiny_bert_dir):
    """BERT's encoder hands each block its attention mask by position. Dropping it (as the first block's
    inputs once did) let real tokens attend to padding, and the block path's Grams differed from the whole
    model's by 8 % (attention.output.dense) on padded batches."""
    from transformers import AutoModel

    from sinecompress.calib.blocks import block_inputs, run_block
    from sinecompress.calib.capture import capture_grams
    from sinecompress.nn.skeleton import find_blocks

    model = AutoModel.from_pretrained(str(tiny_bert_dir)).eval()
    _, blocks = find_blocks(model)
    ids = token_batch(5, 7)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    inputs = block_inputs(model, blocks[0], [batch])
    assert inputs[0][1]["attention_mask"] is not None
    name = "attention.output.dense"
    _, grams = run_block(blocks[0], inputs, names=[name], masks=[mask])
    whole = capture_grams(model, ["encoder.layer.0." + name], [batch])["encoder.layer.0." + name]
    torch.testing.assert_close(grams[name]["gram"], whole["gram"], rtol=1e-5, atol=1e-5)


def test_a_tunes_closing_pass_gives_the_next_blocks_inputs_and_none_when_undone(llama_dir):
    from transformers import AutoModel

    from sinecompress.calib.blocks import block_inputs, run_block
    from sinecompress.nn.skeleton import find_blocks
    from sinecompress.pipeline.blockwise import tune_block

    model = AutoModel.from_pretrained(str(llama_dir)).eval()
    _, blocks = find_blocks(model)
    ids = token_batch(4, 9)
    inputs = block_inputs(model, blocks[0], [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}])
    masks = [None, None]
    own, _ = run_block(blocks[0], inputs)
    kw = dict(steps=4, lr=0.05, seed=0, device="cpu")
    tuned = tune_block(blocks[0], ["mlp.down_proj"], inputs, [1.1 * t for t in own], masks, **kw)
    assert not tuned["undone"]
    after, _ = run_block(blocks[0], inputs)
    for got, want in zip(tuned["outputs"], after):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Steps far too large end worse than the start: the tune is undone, and its last pass is not the block's.
    undone = tune_block(blocks[0], ["mlp.down_proj"], inputs, [1.01 * t for t in after], masks,
                        **{**kw, "lr": 100.0})
    assert undone["undone"] and undone["outputs"] is None


def test_tuning_on_pieces_of_batches_still_gives_whole_batches_as_the_next_inputs(llama_dir):
    from transformers import AutoModel

    from sinecompress.calib.blocks import block_inputs, run_block
    from sinecompress.nn.skeleton import find_blocks
    from sinecompress.pipeline.blockwise import tune_block

    model = AutoModel.from_pretrained(str(llama_dir)).eval()
    _, blocks = find_blocks(model)
    ids = token_batch(6, 9)
    inputs = block_inputs(model, blocks[0], [{"input_ids": ids[:4]}, {"input_ids": ids[4:]}])
    own, _ = run_block(blocks[0], inputs)
    tuned = tune_block(blocks[0], ["mlp.down_proj"], inputs, [1.1 * t for t in own], [None, None],
                       steps=6, lr=0.05, seed=0, device="cpu", rows=1)  # six one-row pieces
    assert not tuned["undone"] and tuned["loss_end"] < tuned["loss_start"]
    after, _ = run_block(blocks[0], inputs)
    assert [o.shape[0] for o in tuned["outputs"]] == [4, 2]
    for got, want in zip(tuned["outputs"], after):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
