"""Running calibration batches through a model and capturing what layers see.

``capture_grams`` accumulates, per target module, the Gram matrix ``XᵀX`` of its inputs over real
(non-padding) tokens. ``capture_pair`` runs an original and a partly compressed model on the same
batches and accumulates, at one module, ``X̃ᵀX̃`` and ``X̃ᵀX`` (X̃: what the compressed model feeds it),
which the sequential fit needs. Both use the same hook.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


def real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``x`` (…, width) for real tokens only: padding is not what a layer sees in use."""
    x = x.reshape(-1, x.shape[-1])
    if mask is not None and mask.numel() == x.shape[0]:
        x = x[mask.reshape(-1).bool().to(x.device)]
    return x


def gram_hook(stats: dict, name: str, current: dict, partner: dict | None = None):
    """A forward pre-hook adding this call's XᵀX to ``stats[name]``; with ``partner`` (the other model's
    inputs at the same module, stashed by ``_stash_hook``) also XᵀX_partner.

    Modules called one after another on the same tensor (q/k/v, gate/up) share one Gram: the later ones'
    ``gram`` is the first one's tensor (``shared``: its name), computed and held once. Consumers must
    therefore not change a Gram in place."""
    def fn(_mod, inputs):
        raw = inputs[0]
        s = stats[name]
        first = current.get("last")
        if s["gram"] is None and partner is None and first is not None and first[0] is raw:
            s["shared"] = first[1]  # decided on the first batch: the forward calls the same way every time
        if s.get("shared") is not None:
            s["gram"], s["tokens"] = stats[s["shared"]]["gram"], stats[s["shared"]]["tokens"]
            return
        current["last"] = (raw, name)
        if partner is None:  # a block of rows at a time: no copy of all this call's real tokens
            for x in _real_rows(raw.detach(), current["mask"]):
                s["gram"] = _accumulate(s["gram"], x, x)
                s["tokens"] += x.shape[0]
            return
        x = real_tokens(raw.detach(), current["mask"]).float()  # row-aligned with the partner's stash
        s["gram"] = _accumulate(s["gram"], x, x)
        s["cross"] = _accumulate(s["cross"], x, partner.pop(name))
        s["tokens"] += x.shape[0]
    return fn


def _real_rows(x: torch.Tensor, mask: torch.Tensor | None, rows: int = 1024):
    """``real_tokens(x, mask)`` in float32, ``rows`` rows of ``x`` at a time (a 4096-token batch into a
    5632-wide layer is 92 MiB; a block of it, 23)."""
    x = x.reshape(-1, x.shape[-1])
    keep = mask.reshape(-1).bool().to(x.device) if mask is not None and mask.numel() == x.shape[0] else None
    for i in range(0, x.shape[0], rows):
        c = x[i:i + rows] if keep is None else x[i:i + rows][keep[i:i + rows]]
        yield c.float()


def _accumulate(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """total + aᵀb, float32, in place. Float32 halves what the Grams of a block hold (a 5632-wide layer's:
    121 MiB, not 242); their rounding (~1e-6 of an entry) is far below the fits' damping (1e-2 of the mean
    diagonal), and the fits read them in float64 a block at a time (``fit/whiten.py``)."""
    if total is None:
        return a.T @ b
    return total.addmm_(a.T, b)


def _stash_hook(store: dict, name: str, current: dict):
    def fn(_mod, inputs):
        store[name] = real_tokens(inputs[0].detach(), current["mask"]).float()
    return fn


def named_modules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise InputError(f"layer {missing[0]!r} is not a module of the calibration model")
    return {n: mods[n] for n in names}


def capture_grams(model: nn.Module, names: list[str], batches: list[dict], device: str = "cpu") -> dict:
    """Per target module: ``{"gram": XᵀX (float32, n×n), "tokens": count}`` over real tokens."""
    mods = named_modules(model, names)
    stats = {n: {"gram": None, "tokens": 0} for n in names}
    current: dict = {"mask": None}
    handles = [mods[n].register_forward_pre_hook(gram_hook(stats, n, current)) for n in names]
    try:
        run_batches(model, batches, device, current)
    finally:
        for h in handles:
            h.remove()
    return stats


@torch.no_grad()
def capture_pair(teacher: nn.Module, student: nn.Module, name: str, batches: list[dict],
                 device: str = "cpu") -> dict:
    """``{"gram": X̃ᵀX̃, "cross": X̃ᵀX, "tokens": count}`` (float32) at module ``name``; X from ``teacher``,
    X̃ from ``student`` on the same batches."""
    current: dict = {"mask": None}
    seen: dict = {}
    stats = {name: {"gram": None, "cross": None, "tokens": 0}}
    hooks = [named_modules(teacher, [name])[name].register_forward_pre_hook(_stash_hook(seen, name, current)),
             named_modules(student, [name])[name].register_forward_pre_hook(gram_hook(stats, name, current, seen))]
    try:
        teacher.eval()
        student.eval()
        for b in batches:
            current["mask"] = b.get("attention_mask")
            b = {k: v.to(device) for k, v in b.items()}
            teacher(**b)
            student(**b)
    finally:
        for h in hooks:
            h.remove()
    return stats[name]


def run_batches(model: nn.Module, batches: list[dict], device: str = "cpu", current: dict | None = None):
    """Forward every batch (no grad); ``current["mask"]`` is set to each batch's attention mask."""
    model.eval()
    with torch.no_grad():
        for b in batches:
            if current is not None:
                current["mask"] = b.get("attention_mask")
            try:
                model(**{k: v.to(device) for k, v in b.items()})
            except (TypeError, ValueError, RuntimeError, IndexError) as e:
                raise InputError(f"calibration inputs do not fit the model ({type(e).__name__}: {e})") from None


def forward_hidden(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    """The model's hidden states on ``batch``: every block's output when it exposes them (the embeddings'
    output left out: compression does not change it), else its main output."""
    try:
        out = model(**batch, output_hidden_states=True)
    except TypeError:
        out = model(**batch)
    hs = getattr(out, "hidden_states", None)
    if hs is not None:
        return list(hs[1:])
    if isinstance(out, torch.Tensor):
        return [out]
    last = getattr(out, "last_hidden_state", None)
    if last is None:
        last = getattr(out, "logits", None)
    if last is None:
        last = out[0]
    return [last]
