"""End-to-end calibration fine-tune: tune every factor against the original model's outputs.

The teacher's hidden states on the calibration batches are computed once and held, up to
``HELD_STATES_MIB`` (tokens × width × layers: 360 MiB for all-MiniLM-L6-v2 on all 1,843 built-in texts),
so a step costs one student forward and backward; the batches past that are rerun through the teacher when
used, which bounds the memory of a larger encoder or more text at the cost of one teacher forward a step.
The loss is the mean, over the teacher's hidden states (every block's output when the model exposes them), of
the squared error relative to the teacher's energy on real tokens (``relative_error``): matching each
block keeps errors from compounding through the depth.

Deterministic for a given seed: the batch order comes from a seeded generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from ..calib.capture import forward_hidden
from ..config import resolve_device
from ..io.hf_model import is_causal_lm
from ..progress import QUIET, Progress

HELD_STATES_MIB = 1024


@torch.no_grad()
def teacher_targets(teacher: nn.Module, batches: list[dict], device: str,
                    budget_mib: float = HELD_STATES_MIB) -> list[list[torch.Tensor] | None]:
    """The teacher's hidden states on each batch, in order, while they fit in ``budget_mib`` together; None
    from the first batch that would not (batches are sorted by length, so the later ones are no smaller)."""
    teacher.eval().to(device)
    held, room, full = [], budget_mib * 2**20, False
    for b in batches:
        states = None
        if not full:
            states = [h.detach() for h in forward_hidden(teacher, {k: v.to(device) for k, v in b.items()})]
            size = sum(h.numel() * h.element_size() for h in states)
            full = size > room
            room -= size
            if full:
                states = None
        held.append(states)
    return held


def token_weights(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """1 for each real token of ``h`` (…, tokens, width), 0 for padding; every row counts without a mask."""
    if mask is not None and h.dim() == 3 and tuple(mask.shape) == tuple(h.shape[:2]):
        return mask.to(device=h.device, dtype=torch.float32)
    return torch.ones(h.shape[:-1], dtype=torch.float32, device=h.device)


def batch_energy(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t ‖h_t‖² over the tokens of ``h`` (the batch-wide ratio's denominator), floored above 0."""
    return (h.detach().float().pow(2).sum(-1) * w).sum().clamp_min(1e-12)


def token_energy(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """‖h_t‖² per token, floored at 1e-6 of the real tokens' mean (an all-zero token divides nothing by 0)."""
    e = h.detach().float().pow(2).sum(-1)
    return e.clamp_min(1e-6 * float((e * w).sum() / w.sum().clamp_min(1)) + 1e-30)


def tokens_alike(model: nn.Module) -> bool:
    """How ``relative_error`` weighs the tokens of ``model``'s hidden states: each alike for a causal LM, whose
    every position is read through a norm (scale-free) to predict a token; by energy for the rest (encoders,
    vision models), whose outputs are pooled, so a token's share of the pooled error grows with its energy.
    Measured on all-MiniLM-L6-v2 (``benchmarks/minilm_quality.py``, k = 32): mean cosine 0.794 by energy,
    0.786 with each token alike."""
    config = getattr(model, "config", None)
    return config is not None and is_causal_lm(config)


def relative_error(y: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                   per_token: bool = True) -> torch.Tensor:
    """``per_token``: the mean over real tokens of ‖y_t − target_t‖² / ‖target_t‖²; else the batch-wide
    ratio Σ_t ‖y_t − target_t‖² / Σ_t ‖target_t‖², which weighs each token's relative error by its energy.

    Per token for an LLM (``tokens_alike``): in its residual stream one token (the first, an attention
    sink) can hold almost all of the energy (over 98 % of ‖h‖² after SmolLM2's blocks 12-28), and a
    batch-wide ratio would measure that token alone."""
    w = token_weights(target, mask)
    d = (y.float() - target.float()).pow(2).sum(-1)
    if not per_token:
        return (w * d).sum() / batch_energy(target, w)
    return (w * d / token_energy(target, w)).sum() / w.sum().clamp_min(1)


def distill_loss(student_h: list[torch.Tensor], teacher_h: list[torch.Tensor], mask: torch.Tensor | None,
                 per_token: bool = True):
    """The mean of ``relative_error`` over the hidden states."""
    total = sum(relative_error(s, t, mask, per_token) for s, t in zip(student_h, teacher_h))
    return total / max(len(student_h), 1)


def adam_tune(params: list[torch.Tensor], loss_of: Callable[[int], torch.Tensor], n: int, *, steps: int,
              lr: float, seed: int = 0, progress: Progress = QUIET, stage: str | None = "fine-tuning",
              time_budget: float | None = None) -> dict:
    """Adam on ``params`` for ``steps`` steps; step ``t`` minimises ``loss_of(i)`` for one of the ``n`` items,
    taken in a seeded random order. ``lr`` is relative: each tensor moves by about ``lr`` times its own RMS
    per step, so one value serves factors of very different scales; the step is annealed by a cosine.
    A tune that ends with a higher mean loss than it started from is undone: the parameters are put back
    (a sharp fit can be knocked off its optimum by the first full-size steps; measured on SmolLM2, where
    block tuning raised the mean block-output error 0.0011 → 0.0021 before this guard).
    Returns ``{"loss_start", "loss_end", "steps", "seconds", "undone"}`` (losses: the mean over all items;
    ``loss_end`` is what the parameters give on return, ``loss_tuned`` what the tune reached when undone)."""
    t0 = time.perf_counter()
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": [p], "lr": lr * float(p.detach().float().pow(2).mean().sqrt().clamp_min(1e-6))}
              for p in params]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []

    @torch.no_grad()
    def mean_loss():
        return sum(float(loss_of(i)) for i in range(n)) / max(n, 1)

    loss_start = mean_loss()
    start = [p.detach().clone() for p in params]
    if stage:
        progress.stage(stage, steps)
    done = 0
    for step in range(steps):
        if not order:
            order = torch.randperm(n, generator=g).tolist()
        i = order.pop()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(i)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if stage:
            progress.advance(done, f"loss {loss.detach().item():.4f}")
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
    for p in params:
        p.requires_grad_(False)
    record = {"loss_start": loss_start, "loss_end": mean_loss(), "steps": done, "undone": False}
    if not record["loss_end"] <= loss_start:  # worse, or non-finite
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        record.update(loss_tuned=record["loss_end"], loss_end=loss_start, undone=True)
    return {**record, "seconds": time.perf_counter() - t0}


def distill(student: nn.Module, teacher: nn.Module, batches: list[dict], modules: list[str], *, steps: int,
            lr: float = 1e-2, seed: int = 0, device: str = "cpu", progress: Progress = QUIET,
            time_budget: float | None = None, held_mib: float = HELD_STATES_MIB) -> dict:
    """Tune the compressed ``modules`` of ``student`` (factors and biases) for ``steps`` Adam steps against
    the teacher's hidden states (``adam_tune``; tokens weighed as ``tokens_alike(teacher)``), held up to
    ``held_mib`` and recomputed past it. Returns ``{"loss_start", "loss_end", "steps", "seconds", "device",
    "tokens", "teacher_states"}``: "alike" or "energy"; batches held and recomputed, and the MiB held."""
    per_token = tokens_alike(teacher)
    device = resolve_device(device)
    t0 = time.perf_counter()
    targets = teacher_targets(teacher, batches, device, held_mib)
    student.to(device).eval()  # no dropout: we match the deterministic teacher
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for name in modules for p in student.get_submodule(name).parameters()]
    dev_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def loss_of(i):
        b = dev_batches[i]
        target = targets[i]
        if target is None:
            with torch.no_grad():
                target = forward_hidden(teacher, b)
        return distill_loss(forward_hidden(student, b), target, b.get("attention_mask"), per_token)

    record = adam_tune(params, loss_of, len(dev_batches), steps=steps, lr=lr, seed=seed, progress=progress,
                       time_budget=None if time_budget is None else time_budget - (time.perf_counter() - t0))
    held = [t for t in targets if t is not None]
    mib = sum(h.numel() * h.element_size() for t in held for h in t) / 2**20
    return {**record, "seconds": time.perf_counter() - t0, "device": device,
            "tokens": "alike" if per_token else "energy",
            "teacher_states": {"held": len(held), "recomputed": len(targets) - len(held), "held_mib": round(mib, 3)}}
