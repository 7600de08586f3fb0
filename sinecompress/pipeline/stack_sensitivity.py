"""``--allocate sensitivity`` for a model fitted block by block: its measurements, block by block.

The allocation needs, per layer, the spectrum of its whitened weight (from its Gram) and its output
sensitivity (``allocate.output_sensitivity``: one random probe of the hidden states per piece of a
batch, back-propagated to every layer's output). Measured on the whole model, that holds the whole
model and its activations (3.3 GB for SmolLM2-135M; a 7B model would not fit in 24 GB). Here the
model is never whole:

1. forward, block by block, with the original weights: each block's Grams give its layers' spectra,
   and each block's inputs are saved to disk (``scratch``: raw float32, a file per block and batch,
   written and read without a copy; blocks × tokens × width × 4 bytes in all, 2.3 GB for SmolLM2 with
   the default 256 × 128 tokens, each block's files deleted once its backward is done);
2. backward, from the last block to the first that holds a target: each block runs again on its saved
   inputs with the probe's taps; the probe's gradient with respect to the block's inputs is handed on
   to the block before.

The probes are ``output_sensitivity``'s own (the same draw per piece and hidden state; the last hidden
state through the model's final norm, as the model reports it), so both passes give the same numbers.
Layers outside the stack (an untied head) are not measured, and keep their uniform rank.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..calib.blocks import block_output, row_pieces, run_block, to_device
from ..config import FactorizeConfig
from ..errors import OutputError
from ..heap import trim_heap
from ..io.sources import Source
from ..nn.skeleton import materialize, release
from ..progress import QUIET, Progress
from .allocate import energy_share, probe, probe_draw, rerank, sensitivity_pool, tap
from .distill import tokens_alike
from .plan import Plan
from .stack import Stack, open_stack

#: Tokens per backward piece, as ``output_sensitivity``'s: what one piece's backward holds.
PROBE_TOKENS = 512


def final_norm(model: nn.Module, stack: str) -> tuple[str, nn.Module] | None:
    """The norm a model applies to its last block's output before reporting it (Llama's ``model.norm``,
    GPT-2's ``transformer.ln_f``; BERT has none): the first module registered after the stack, at the
    stack's level or above, when that module is a norm."""
    parts = stack.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = model.get_submodule(".".join(parts[:depth]))
        names = [n for n, _ in parent.named_children()]
        after = names[names.index(parts[depth]) + 1:]
        if after:
            mod = getattr(parent, after[0])
            is_norm = isinstance(mod, (nn.LayerNorm, nn.RMSNorm)) or type(mod).__name__.endswith("Norm")
            return (".".join([*parts[:depth], after[0]]), mod) if is_norm else None
    return None


def apply_stack_sensitivity(plan: Plan, src: Source, config: FactorizeConfig, device: str, scratch: Path,
                            progress: Progress = QUIET) -> tuple[Plan, dict]:
    """``allocate.apply_sensitivity`` measured block by block (see the module's notes); ``scratch``: an empty
    directory of the run's, for the blocks' inputs."""
    t0 = time.perf_counter()
    st = open_stack(src, config.calibration, device)
    inside, outside = st.split(sensitivity_pool(plan))
    pool = [lp for i in sorted(inside) for lp in inside[i]]
    shares, weights = stack_sensitivity(st, inside, device, scratch, plan.seed, progress)
    new, record = rerank(plan, pool, shares, weights)
    record["outside_stack"] = [lp.name for lp in outside]  # not measured: uniform ranks
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return new, record


def stack_sensitivity(st: Stack, inside: dict[int, list], device: str, scratch: Path, seed: int = 0,
                      progress: Progress = QUIET) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(energy shares, output sensitivities) of the layers ``inside`` (by block index), measured on ``st``."""
    if not inside:
        return {}, {}
    first = min(inside)
    n = len(st.blocks)
    shares: dict[str, torch.Tensor] = {}
    progress.stage("measuring sensitivity", 2 * n - first)
    inputs = st.inputs
    for i, block in enumerate(st.blocks):  # forward: spectra, and every block's inputs saved from the first
        progress.advance(i, f"{st.name}.{i} forward")
        local = _read_block(st, i, inside, device)
        if i >= first:
            _save(inputs, scratch, i)
        outs, grams = run_block(block, inputs, device, local, st.masks)
        for lp, name in zip(inside.get(i, []), local):
            shares[lp.name] = energy_share(lp.oriented(block.get_submodule(name).weight.detach()), grams[name]["gram"])
        inputs = [(y, kw) for y, (_, kw) in zip(outs, inputs)]
        del outs, grams
        release(block)
        trim_heap()
    keywords, shapes = [kw for _, kw in inputs], [x.shape for x, _ in inputs]
    del inputs
    norm = final_norm(st.model, st.name)
    per_token = tokens_alike(st.model)
    if norm is not None:
        materialize(norm[1], norm[0], st.fetch, device=device)
    total: dict[str, float] = {lp.name: 0.0 for lps in inside.values() for lp in lps}
    grads, pieces = None, 0
    for step, i in enumerate(range(n - 1, first - 1, -1)):  # backward: the probe's gradient, block by block
        progress.advance(n + step, f"{st.name}.{i} backward")
        block = st.blocks[i]
        local = _read_block(st, i, inside, device)
        head = norm[1] if norm is not None and i == n - 1 else None
        saved = [(_saved(scratch, i, j), shape) for j, shape in enumerate(shapes)]
        grads, found, pieces = _backward(block, local, saved, keywords, st.masks, grads, head, i, seed, device,
                                         need_input=i > first, per_token=per_token)
        for lp, name in zip(inside.get(i, []), local):
            total[lp.name] = found[name]
        for path, _ in saved:
            path.unlink()
        release(block)
        trim_heap()
    if norm is not None:
        release(norm[1])
    progress.advance(2 * n - first)
    return shares, {name: v / n / max(pieces, 1) for name, v in total.items()}


def _read_block(st: Stack, i: int, inside: dict[int, list], device: str) -> list[str]:
    """Give block i its weights on ``device``; return its measured layers' names inside the block."""
    prefix = f"{st.name}.{i}"
    materialize(st.blocks[i], prefix, st.fetch, device=device)
    st.blocks[i].to(device)
    return [lp.name[len(prefix) + 1:] for lp in inside.get(i, [])]


def _save(inputs: list, scratch: Path, i: int) -> None:
    try:
        for j, (x, _) in enumerate(inputs):
            x.contiguous().numpy().tofile(_saved(scratch, i, j))
    except OSError as e:
        need = sum(x.numel() for x, _ in inputs) * 4 * 2**-20
        raise OutputError(f"{scratch}: cannot save block {i}'s inputs for --allocate sensitivity "
                          f"({e.strerror or e}); it needs {need:,.0f} MiB a block: free space or pick "
                          "another --out") from None


def _saved(scratch: Path, i: int, j: int) -> Path:
    return scratch / f"inputs-{i:05d}-{j:05d}.f32"


def _backward(block: nn.Module, local: list[str], saved: list[tuple[Path, torch.Size]], keywords: list[dict], masks: list,
              grads: list | None, head: nn.Module | None, index: int, seed: int, device: str,
              need_input: bool, per_token: bool = True) -> tuple[list | None, dict[str, float], int]:
    """One block's backward on every piece of its saved inputs: the probe of its output (through ``head``,
    the final norm, at the last block) plus ⟨``grads``, output⟩ (what the later blocks hand back). Returns
    (∂φ/∂inputs per batch, or None; Σ over pieces of rms(y)² ‖∂φ/∂y‖² per layer in ``local``; pieces)."""
    found = dict.fromkeys(local, 0.0)
    new = [] if need_input else None
    p = 0
    with torch.enable_grad():
        for j, kw in enumerate(keywords):
            path, shape = saved[j]
            x = torch.from_file(str(path), size=shape.numel(), dtype=torch.float32).view(shape)
            g_in = torch.empty_like(x) if need_input else None
            mask = masks[j] if j < len(masks) else None
            for s, xs, kws, ms in row_pieces(x, kw, mask, PROBE_TOKENS):
                seen: dict[str, list] = {n: [] for n in local}
                leaves: list[torch.Tensor] = []
                handles = [block.get_submodule(n).register_forward_hook(partial(tap, seen[n], leaves)) for n in local]
                try:
                    xs = xs.to(device).requires_grad_(need_input)
                    y = block_output(block(xs, **to_device(kws, device)))
                    phi = probe(head(y) if head is not None else y, None if ms is None else ms.to(device),
                                probe_draw(seed, p, index), per_token)
                    if grads is not None:
                        phi = phi + (y.float() * grads[j][s].to(device)).sum()
                    wrt = leaves + ([xs] if need_input else [])
                    if wrt:
                        torch.autograd.backward(phi, inputs=wrt)
                finally:
                    for h in handles:
                        h.remove()
                if need_input:
                    g_in[s] = xs.grad.to("cpu", torch.float32)
                for n in local:
                    found[n] += sum(seen[n])
                p += 1
            if need_input:
                new.append(g_in)
    return new, found, p
