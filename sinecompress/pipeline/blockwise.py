"""Block-by-block calibrated compression: the embeddings, one block and the activations in memory.

The model is built from its config with empty parameters (``nn/skeleton.py``); everything outside the
stack of blocks is read from the checkpoint, the calibration batches run up to the first block, and
then, for each block in turn:

1. the block's weights are read; it runs on the current inputs (the outputs of the already compressed
   blocks before it), capturing the Gram XᵀX of each target layer (what the layer will really see);
2. each target layer is fitted to what it sees (whitened SVD or the sine hybrid, as everywhere);
3. with ``finetune.mode`` "block", the block's factors are tuned so that the compressed block, on the
   same inputs, reproduces a target (block-local distillation): the original block's output on these
   inputs (``finetune.target`` "block"), or the original model's output of this block ("model"), which
   needs a second stream of hidden states, the original model's, carried through the stack; aiming at
   it lets a block also correct the earlier blocks' error, which helped the linear fits and hurt the
   sine defaults (``tune_target``);
4. the compressed block produces the next block's inputs, and the block's weights are dropped; with a
   work directory, the block's factors go to disk too (memory does not grow with the depth).

Targets outside the stack (a pooler, an untied head) are fitted to their weights, and the summary says so.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..calib.blocks import block_output, row_pieces, run_block, to_device
from ..config import FactorizeConfig
from ..heap import gpu_record, peak_rss_mib, rss_mib, trim_heap
from ..io.sources import Source
from ..nn.skeleton import materialize, release
from ..nn.surgery import build_module, swap_module
from ..progress import QUIET, Progress
from .distill import adam_tune, relative_error, tokens_alike
from .fitting import fit_layer, fitted, retuned
from .plan import Plan
from .stack import open_stack
from .workdir import WorkDir


def _placeholder(p: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False)


def tune_block(block: nn.Module, modules: list[str], inputs: list[tuple[torch.Tensor, dict]],
               targets: list[torch.Tensor], masks: list, *, steps: int, lr: float, seed: int,
               device: str, rows: int | None = None, per_token: bool = True) -> dict:
    """Adam on the compressed ``modules`` of ``block`` so that it reproduces ``targets`` on ``inputs``.
    Each step takes ``rows`` rows of one batch (a piece of it; None: the whole batch); ``per_token``: how
    ``relative_error`` weighs the tokens.
    ``outputs``: the tuned block's outputs (CPU, float32) from the tune's closing loss pass, which are the
    next block's inputs (one pass over the data fewer per block); None when the tune was undone."""
    for p in block.parameters():
        p.requires_grad_(False)
    params = [p for name in modules for p in block.get_submodule(name).parameters()]
    dev, owner = [], []  # the pieces, and which batch each came from
    for b, ((x, kw), t, m) in enumerate(zip(inputs, targets, masks)):
        tokens = (rows or x.shape[0]) * (x.shape[1] if x.dim() > 2 else 1)
        for s, xs, kws, ms in row_pieces(x, kw, m, tokens):
            dev.append((xs.to(device), to_device(kws, device), t[s].to(device), None if ms is None else ms.to(device)))
            owner.append(b)
    kept: dict[int, torch.Tensor] = {}  # the latest no-grad pass's outputs: after the steps, the closing one

    def loss_of(i):
        x, kw, t, m = dev[i]
        y = block_output(block(x, **kw))
        if torch.is_grad_enabled():
            kept.clear()
        else:
            kept[i] = y.detach().to("cpu", torch.float32)
        return relative_error(y, t, m, per_token)

    record = adam_tune(params, loss_of, len(dev), steps=steps, lr=lr, seed=seed, stage=None)
    done = steps > 0 and not record["undone"] and len(kept) == len(dev)
    outputs = None
    if done:
        outputs = [torch.cat([kept[i] for i in range(len(dev)) if owner[i] == b]) for b in range(len(inputs))]
    return {**record, "outputs": outputs}


def tune_target(target: str, plan: Plan) -> str:
    """``auto``: the original block's output ("block") when any layer is sine, the original model's ("model")
    otherwise. Measured on SmolLM2 at 20 % removed: aiming at the model's output took wsvd + block tuning
    from perplexity 117.3 to 102.9, but the sine defaults from 85.7 to 106.8 (docs/tuning.md)."""
    if target != "auto":
        return target
    return "block" if has_sine(plan) else "model"


def has_sine(plan: Plan) -> bool:
    """Whether any layer is planned sine (a fit that falls back to whitened SVD does not change it)."""
    return any(lp.kind == "sine" for lp in plan.compressed)


def tuning_means(finetune: dict | None) -> tuple[float, float, int, int] | None:
    """(mean block-output error before, after, tuned blocks, blocks where the tune was undone), or None."""
    tuned = [b for b in (finetune or {}).get("blocks", []) if "loss_end" in b]
    if not tuned:
        return None
    return (sum(b["loss_start"] for b in tuned) / len(tuned), sum(b["loss_end"] for b in tuned) / len(tuned),
            len(tuned), sum(1 for b in tuned if b.get("undone")))


def fit_blockwise(src: Source, plan: Plan, config: FactorizeConfig, device: str, tune_steps: int,
                  progress: Progress = QUIET, work: WorkDir | None = None) -> tuple[dict[str, dict], dict]:
    """Fit every compressed layer of ``plan`` block by block; return (factors by layer, a record for the
    summary: data, tokens, per-block losses, peak memory). With ``work``, each block's factors are saved
    there as soon as they are final and returned as lazy mappings."""
    t0 = time.perf_counter()
    st = open_stack(src, config.calibration, device)
    blocks, fetch, masks, data, inputs = st.blocks, st.fetch, st.masks, st.data, st.inputs
    original = inputs  # the original model's stream; the two part at the first compressed block
    aim = tune_target(config.finetune.target, plan)
    by_block, outside = st.split(plan.compressed)
    factors, blocks_done = {}, []
    index = {lp.name: i for i, lp in enumerate(plan.layers)}
    lr = config.finetune.lr_for("block", causal_lm=True, sine=has_sine(plan))  # by the run's layers, not the model's kind
    per_token = tokens_alike(st.model)

    def spill(lps):
        if work is not None:
            for lp in lps:
                factors[lp.name] = work.spill(index[lp.name], lp, factors[lp.name])

    progress.stage("fitting", len(blocks))
    for i, block in enumerate(blocks):
        prefix = f"{st.name}.{i}"
        progress.advance(i, prefix)
        t_block = time.perf_counter()
        materialize(block, prefix, fetch)
        block.to(device)
        layers = list(by_block.get(i, []))  # each as fitted, once fitted (a sine fit may fall back)
        local = [lp.name[len(prefix) + 1:] for lp in layers]
        same = original is inputs  # nothing compressed yet: one stream
        outs, grams = run_block(block, inputs, device, local, masks)
        targets = outs if same else run_block(block, original, device)[0]  # the original model's, at this block
        trim_heap()  # each phase's freed temporaries would otherwise stay resident under the next one's
        if layers:
            outs = None  # the tune aims at ``targets``; the next inputs come from the compressed block
        record = {"block": i, "layers": len(layers)}
        if layers:
            t_fit = time.perf_counter()
            for j, (lp, name) in enumerate(zip(layers, local)):
                w = lp.oriented(block.get_submodule(name).weight.detach())
                factors[lp.name] = fit_layer(w, lp, plan, grams[name]["gram"], device)
                layers[j] = fitted(lp, factors[lp.name])
                if tune_steps <= 0:  # only a tune measures again; a shared Gram goes with its last layer
                    grams[name]["gram"] = None
                trim_heap()
            record["fit_seconds"] = round(time.perf_counter() - t_fit, 3)
            # The copy shares nothing with the block, and the weights about to be swapped out are not copied.
            comp = copy.deepcopy(block, {id(block.get_submodule(n).weight): _placeholder(block.get_submodule(n).weight)
                                         for n in local})
            for lp, name in zip(layers, local):
                old = block.get_submodule(name)
                bias = None if getattr(old, "bias", None) is None else old.bias.detach()
                swap_module(comp, name, build_module(lp.record(factors[lp.name].get("omega")), factors[lp.name], bias,
                                                     dtype=torch.float32).to(device))
            if tune_steps > 0:
                tuned = tune_block(comp, local, inputs, targets, masks, steps=tune_steps, lr=lr, seed=config.seed,
                                   device=device, rows=config.finetune.rows, per_token=per_token)
                record.update(loss_start=round(tuned["loss_start"], 6), loss_end=round(tuned["loss_end"], 6),
                              undone=tuned["undone"], tune_seconds=round(tuned["seconds"], 3))
                for lp, name in zip(layers, local):
                    w = lp.oriented(block.get_submodule(name).weight.detach()).float().cpu()
                    factors[lp.name] = retuned(comp.get_submodule(name), lp, w, grams[name]["gram"].cpu(),
                                               factors[lp.name])
                outs = tuned.pop("outputs")  # held once: they become the next inputs
            if outs is None:
                outs = run_block(comp, inputs, device)[0]
            inputs = [(y, kw) for y, (_, kw) in zip(outs, inputs)]
            del comp
            spill(layers)
        else:
            inputs = [(y, kw) for y, (_, kw) in zip(outs, inputs)]
        # Only a tune aiming at the original model needs its stream (one block forward more per block).
        one_stream = (same and not layers) or tune_steps <= 0 or aim != "model"
        original = inputs if one_stream else [(y, kw) for y, (_, kw) in zip(targets, original)]
        del targets, outs, grams
        release(block)
        trim_heap()
        # What the block left behind, and the peak so far: which block set a deep run's peak shows here.
        blocks_done.append({**record, "seconds": round(time.perf_counter() - t_block, 3), "rss_mib": rss_mib(),
                            "peak_rss_mib": peak_rss_mib(), **gpu_record(device)})
    progress.advance(len(blocks))
    for lp in outside:  # not inside the block stack: fitted to its weights
        factors[lp.name] = fit_layer(lp.oriented(src.get(lp.name + ".weight")), lp, plan, device=device)
        spill([lp])
    return factors, {"mode": "block" if tune_steps > 0 else "none", "data": data.description,
                     **({"target": aim, "lr": lr, "rows": config.finetune.rows,
                         "tokens": "alike" if per_token else "energy"} if tune_steps > 0 else {}),
                     "samples": data.samples, "blocks": blocks_done, "outside_stack": [lp.name for lp in outside],
                     "seconds": round(time.perf_counter() - t0, 3),
                     "peak_rss_mib": peak_rss_mib(), **gpu_record(device)}
