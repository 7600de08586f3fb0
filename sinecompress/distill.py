"""End-to-end calibration fine-tune: tune every factor against the original model's outputs.

The teacher's hidden states on the calibration batches are computed once and cached (they are
small: tokens × width × layers), so each step costs one student forward and backward. The loss is
the mean, over the teacher's hidden states (every block's output when the model exposes them), of
the squared error relative to the teacher's own energy, counted on real tokens only: matching each
block keeps errors from compounding through the depth.

Deterministic for a given seed: the batch order comes from a seeded generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from .layers import LowRankLinear, SineLowRankLinear

StepReport = Callable[[int, int, float], None]  # (step, total, loss)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import UsageError

        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return device


def compressed_module(lp_kind: str, f: dict, bias: torch.Tensor | None, omega: float | None) -> nn.Module:
    """An nn.Module (float32) holding one layer's fitted factors and its original bias."""
    u, v = f["u"].float(), f["v"].float()
    m, n = u.shape[0], v.shape[0]
    if lp_kind == "lowrank":
        mod = LowRankLinear(n, m, u.shape[1], bias=bias is not None)
        with torch.no_grad():
            mod.u.copy_(u)
            mod.v.copy_(v)
    else:
        k_l = f["lin_u"].shape[1] if f.get("lin_u") is not None else 0
        mod = SineLowRankLinear(n, m, u.shape[1], omega, bias=bias is not None,
                                amplitude="row" if f["amp"].numel() > 1 else "scalar", linear_rank=k_l)
        mod.load_factors({k: (t.float() if t is not None else None) for k, t in f.items()
                          if k in ("u", "v", "amp", "lin_u", "lin_v")})
    if bias is not None:
        with torch.no_grad():
            mod.bias.copy_(bias.float())
    return mod


def swap_in(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def factors_of(mod: nn.Module) -> dict:
    """Read the (tuned) factors back out of a compressed module, detached, on the CPU."""
    if isinstance(mod, LowRankLinear):
        f = {"u": mod.u, "v": mod.v}
    else:
        f = {"u": mod.u, "v": mod.v, "amp": mod.amp, "lin_u": mod.lin_u, "lin_v": mod.lin_v}
    f = {k: (t.detach().float().cpu().clone() if t is not None else None) for k, t in f.items()}
    f["bias"] = mod.bias.detach().float().cpu().clone() if mod.bias is not None else None
    return f


def _hidden(out) -> list[torch.Tensor]:
    hs = getattr(out, "hidden_states", None)
    if hs is not None:
        return list(hs[1:])  # the embeddings' output is not affected by compression
    if isinstance(out, torch.Tensor):
        return [out]
    last = getattr(out, "last_hidden_state", None)
    if last is None:
        last = getattr(out, "logits", None)
    if last is None:
        last = out[0]
    return [last]


def _forward(model, batch):
    try:
        return model(**batch, output_hidden_states=True)
    except TypeError:
        return model(**batch)


@torch.no_grad()
def teacher_targets(teacher: nn.Module, batches: list[dict], device: str) -> list[list[torch.Tensor]]:
    teacher.eval().to(device)
    return [[h.detach() for h in _hidden(_forward(teacher, {k: v.to(device) for k, v in b.items()}))]
            for b in batches]


def distill_loss(student_h: list[torch.Tensor], teacher_h: list[torch.Tensor], mask: torch.Tensor | None):
    total = 0.0
    for s, t in zip(student_h, teacher_h):
        d = (s.float() - t.float()) ** 2
        e = t.float() ** 2
        if mask is not None and d.dim() == 3 and mask.shape == d.shape[:2]:
            w = mask.unsqueeze(-1).to(d.dtype)
            d, e = d * w, e * w
        total = total + d.sum() / e.sum().clamp_min(1e-12)
    return total / max(len(student_h), 1)


def distill(student: nn.Module, teacher: nn.Module, batches: list[dict], modules: list[str], *, steps: int,
            lr: float = 1e-2, seed: int = 0, device: str = "cpu", progress: StepReport | None = None,
            time_budget: float | None = None) -> dict:
    """Tune the compressed ``modules`` of ``student`` (factors and biases) for ``steps`` Adam steps.

    ``lr`` is relative: each tensor moves by about ``lr`` times its own RMS per step, so one value
    serves factors of very different scales. Returns ``{"loss_start", "loss_end", "steps", "seconds"}``.
    """
    device = resolve_device(device)
    t0 = time.perf_counter()
    targets = teacher_targets(teacher, batches, device)
    student.to(device).eval()  # no dropout: we match the deterministic teacher
    for p in student.parameters():
        p.requires_grad_(False)
    params = []
    for name in modules:
        for p in student.get_submodule(name).parameters():
            p.requires_grad_(True)
            params.append(p)
    groups = [{"params": [p], "lr": lr * float(p.detach().float().pow(2).mean().sqrt().clamp_min(1e-6))}
              for p in params]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    dev_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    @torch.no_grad()
    def eval_loss():
        tot = sum(float(distill_loss(_hidden(_forward(student, b)), t, b.get("attention_mask")))
                  for b, t in zip(dev_batches, targets))
        return tot / max(len(dev_batches), 1)

    loss_start = eval_loss()
    done = 0
    for step in range(steps):
        if not order:
            order = torch.randperm(len(dev_batches), generator=g).tolist()
        i = order.pop()
        b = dev_batches[i]
        opt.zero_grad(set_to_none=True)
        loss = distill_loss(_hidden(_forward(student, b)), targets[i], b.get("attention_mask"))
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if progress:
            progress(done, steps, loss.detach().item())
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
    for p in student.parameters():
        p.requires_grad_(False)
    return {"loss_start": loss_start, "loss_end": eval_loss(), "steps": done,
            "seconds": time.perf_counter() - t0, "device": device}
