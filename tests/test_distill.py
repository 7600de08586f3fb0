"""The tuning loop shared by the block-local and the whole-model fine-tune (pipeline/distill.adam_tune)."""

from __future__ import annotations

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
