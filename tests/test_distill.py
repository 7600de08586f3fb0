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
