"""The tuning loop shared by the block-local and the whole-model fine-tune (pipeline/distill.adam_tune)."""

from __future__ import annotations

import pytest
import torch

from sinecompress.pipeline.distill import adam_tune


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = [torch.randn(8, 4, generator=g) for _ in range(3)]
    p = torch.randn(8, 4, generator=g)
    return p, lambda i: ((p - target[i]) ** 2).mean()


def test_a_tune_that_helps_is_kept():
    p, loss_of = _problem()
    r = adam_tune([p], loss_of, 3, steps=40, lr=0.1, stage=None)
    assert not r["undone"] and r["loss_end"] < r["loss_start"]


def test_a_tune_that_ends_worse_is_undone_exactly():
    """A sharp start knocked off by oversized steps: the parameters come back bit for bit."""
    g = torch.Generator().manual_seed(1)
    target = torch.randn(8, 4, generator=g)
    p = target + 1e-4 * torch.randn(8, 4, generator=g)  # nearly at the optimum already
    before = p.clone()
    r = adam_tune([p], lambda i: ((p - target) ** 2).mean(), 1, steps=3, lr=5.0, stage=None)
    assert r["undone"] and r["loss_tuned"] > r["loss_start"] == r["loss_end"]
    assert torch.equal(p, before)


def test_a_tune_that_diverges_to_nan_is_undone():
    p, _ = _problem()
    before = p.clone()
    r = adam_tune([p], lambda i: (p * float("nan")).sum(), 1, steps=2, lr=0.1, stage=None)
    assert r["undone"] and torch.equal(p, before)


def test_relative_error_weighs_every_real_token_alike():
    """A sink token 100× the others' norm: the loss is the mean of the tokens' own ratios, by hand."""
    from sinecompress.pipeline.distill import relative_error

    t = torch.ones(1, 3, 2)
    t[0, 0] *= 100.0  # the sink
    y = t.clone()
    y[0, 1] += torch.tensor([1.0, 0.0])  # token 1: ‖δ‖² = 1 against ‖t‖² = 2
    y[0, 2] += 5.0  # token 2: padding, whatever its error
    mask = torch.tensor([[1, 1, 0]])
    assert abs(float(relative_error(y, t, mask)) - (0.0 + 0.5) / 2) < 1e-7
    # a batch-wide ratio would have been 1 / (2·100² + 2) ≈ 5e-5: the sink alone
    assert abs(float(relative_error(y, t, None)) - (0.0 + 0.5 + 50 / 2) / 3) < 1e-6


def test_relative_error_of_an_all_zero_target_token_is_finite():
    from sinecompress.pipeline.distill import relative_error

    t = torch.ones(1, 2, 3)
    t[0, 1] = 0.0
    assert torch.isfinite(relative_error(t + 0.1, t, None))


def test_relative_error_by_energy_is_the_batch_wide_ratio():
    """``per_token=False``: Σ‖δ_t‖² / Σ‖t_t‖² over real tokens, by hand (the sink token dominates it)."""
    from sinecompress.pipeline.distill import relative_error

    t = torch.ones(1, 3, 2)
    t[0, 0] *= 100.0
    y = t.clone()
    y[0, 1] += torch.tensor([1.0, 0.0])
    y[0, 2] += 5.0  # padding
    mask = torch.tensor([[1, 1, 0]])
    assert float(relative_error(y, t, mask, per_token=False)) == pytest.approx(1 / (2 * 100**2 + 2), rel=1e-6)
    assert float(relative_error(y, t, None, per_token=False)) == pytest.approx((1 + 50) / (2 * 100**2 + 2 + 2),
                                                                                rel=1e-6)


def test_tokens_alike_for_causal_lms_only(tmp_path, tiny_bert_dir):
    """An LLM's tokens weigh alike (attention sinks); an encoder's and a config-less module's by energy."""
    from transformers import AutoModel, AutoModelForCausalLM

    from sinecompress.pipeline.distill import tokens_alike

    from .helpers import tiny_llama

    assert tokens_alike(AutoModelForCausalLM.from_pretrained(tiny_llama(tmp_path)))
    assert not tokens_alike(AutoModel.from_pretrained(tiny_bert_dir))
    assert not tokens_alike(torch.nn.Linear(2, 2))


def test_distill_records_how_it_weighed_the_tokens(tiny_bert_dir):
    """The whole-model tune of an encoder weighs by energy, and its record says so."""
    import copy

    from transformers import AutoModel

    from sinecompress.calib.data import load_calibration
    from sinecompress.pipeline.distill import distill

    teacher = AutoModel.from_pretrained(tiny_bert_dir).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.encoder.layer[0].intermediate.dense.weight.mul_(0.9)
    batches = load_calibration(None, tiny_bert_dir, 4, 16).batches
    r = distill(student, teacher, batches, ["encoder.layer.0.intermediate.dense"], steps=4, lr=1e-2)
    assert r["tokens"] == "energy" and r["loss_end"] < r["loss_start"]


def _tiny_pair(tiny_bert_dir, texts: int):
    import copy

    from transformers import AutoModel

    from sinecompress.calib.data import load_calibration

    teacher = AutoModel.from_pretrained(tiny_bert_dir).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.encoder.layer[0].intermediate.dense.weight.mul_(0.9)
    return teacher, student, load_calibration(None, tiny_bert_dir, texts, 16, batch_size=4).batches


def test_teacher_states_are_held_up_to_the_budget_and_none_after(tiny_bert_dir):
    from sinecompress.calib.capture import forward_hidden
    from sinecompress.pipeline.distill import teacher_targets

    teacher, _, batches = _tiny_pair(tiny_bert_dir, 12)
    sizes = [sum(h.numel() * h.element_size() for h in forward_hidden(teacher, b)) for b in batches]
    assert len(batches) == 3
    every = teacher_targets(teacher, batches, "cpu")
    assert all(t is not None for t in every)
    first = teacher_targets(teacher, batches, "cpu", budget_mib=(sizes[0] + sizes[1] - 1) / 2**20)
    assert first[0] is not None and first[1:] == [None, None]
    assert all(torch.equal(a, b) for a, b in zip(first[0], every[0]))
    exact = teacher_targets(teacher, batches, "cpu", budget_mib=(sizes[0] + sizes[1]) / 2**20)
    assert [t is not None for t in exact] == [True, True, False]
    assert teacher_targets(teacher, batches, "cpu", budget_mib=0) == [None] * 3


def test_a_tune_past_the_budget_reruns_the_teacher_and_tunes_identically(tiny_bert_dir):
    """Recomputing the teacher's states instead of holding them changes the memory, not the result."""
    from sinecompress.calib.capture import forward_hidden
    from sinecompress.pipeline.distill import distill

    name = "encoder.layer.0.intermediate.dense"
    runs = []
    for held_mib in (1024, 0):
        teacher, student, batches = _tiny_pair(tiny_bert_dir, 12)
        r = distill(student, teacher, batches, [name], steps=6, lr=1e-2, held_mib=held_mib)
        runs.append((r, student.get_submodule(name).weight.detach().clone()))
    (held, w_held), (rerun, w_rerun) = runs
    assert held["teacher_states"]["held"] == 3 and held["teacher_states"]["recomputed"] == 0
    _, _, batches = _tiny_pair(tiny_bert_dir, 12)
    size = sum(h.numel() * h.element_size() for b in batches for h in forward_hidden(teacher, b))
    assert held["teacher_states"]["held_mib"] == round(size / 2**20, 3) > 0
    assert rerun["teacher_states"] == {"held": 0, "recomputed": 3, "held_mib": 0.0}
    assert torch.equal(w_held, w_rerun) and held["loss_end"] == rerun["loss_end"] < held["loss_start"]
