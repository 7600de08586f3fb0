"""How many Adam steps the sine hybrid's per-layer fit needs on a real LLM, and whether ω matters there.

On SmolLM2-135M (the bundled GGUF), the 7 target layers of the chosen blocks are fitted to the Grams of
what they see on the built-in calibration text (the original blocks' inputs), at the rank of
``--param-ratio`` (as the plan gives it), with whitened SVD and with the sine hybrid at several step
counts and ω. Reports each variant's mean activation error ‖(Ŵ−W)L‖/‖WL‖ over the layers and its fit time.

    PYTHONPATH=. python benchmarks/smollm_fit_steps.py --blocks 0 15 --steps 50 100 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, write_section  # noqa: E402

from sinecompress.calib.blocks import block_inputs, run_block  # noqa: E402
from sinecompress.calib.data import load_calibration  # noqa: E402
from sinecompress.fit.sine import FIT_LR, fit_calibrated, gram_dtype_on  # noqa: E402
from sinecompress.io.open import open_source  # noqa: E402
from sinecompress.nn.skeleton import materialize, materialize_on_use, move_real, release  # noqa: E402
from sinecompress.pipeline.plan import LINEAR_FRACTION, rank_for_ratio, split_rank  # noqa: E402
from sinecompress.pipeline.stack import fetcher, skeleton  # noqa: E402

LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def block_grams(blocks_wanted: list[int], samples: int, seq_len: int, pack: bool = False):
    """{block: {layer: (weight, gram)}}, each block run on the original model's hidden states."""
    src = open_source("example:smollm2")
    data = load_calibration(None, src.side_dir(), samples, seq_len, pack=pack)
    model, stack, blocks, names = skeleton(src)
    fetch = fetcher(src, names)
    move_real(model, "cpu")
    hooks = materialize_on_use(model, fetch, stack + ".", "cpu")
    masks = [b.get("attention_mask") for b in data.batches]
    inputs = block_inputs(model, blocks[0], data.batches)
    for h in hooks:
        h.remove()
    out = {}
    for i, block in enumerate(blocks[: max(blocks_wanted) + 1]):
        materialize(block, f"{stack}.{i}", fetch)
        outs, grams = run_block(block, inputs, "cpu", list(LAYERS) if i in blocks_wanted else [], masks)
        if i in blocks_wanted:
            out[i] = {n: (block.get_submodule(n).weight.detach().float().clone(), grams[n]["gram"]) for n in LAYERS}
        inputs = [(y, kw) for y, (_, kw) in zip(outs, inputs)]
        release(block)
    return out, data.description


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 15])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--omegas", type=float, nargs="+", default=[30.0, 100.0, 300.0],
                    help="ω values tried at the middle step count (the --omega auto candidates)")
    ap.add_argument("--lrs", type=float, nargs="+", default=[FIT_LR],
                    help="relative Adam steps of the fit, each tried at every step count")
    ap.add_argument("--gram-fracs", type=float, nargs="*", default=[],
                    help="also fit against the Gram truncated to this fraction of its eigenpairs (at the most steps)")
    ap.add_argument("--linear-shares", type=float, nargs="*", default=[],
                    help="also fit with this linear share of the rank (the default is plan.LINEAR_FRACTION), at the "
                         "most steps; adds a per-layer table")
    ap.add_argument("--gram-dtypes", choices=["float32", "bfloat16"], nargs="*", default=[],
                    help="also fit with the loss's Gram product in this dtype, at the most steps (the default is "
                         "bfloat16 where it is native, float32 elsewhere)")
    ap.add_argument("--pack", action="store_true", help="calibrate on packed rows (the causal-LM default)")
    ap.add_argument("--param-ratio", type=float, default=0.8)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", default="smollm_fit_steps", help="BENCHMARKS.md section to (re)write")
    args = ap.parse_args()
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    grams, data = block_grams(args.blocks, args.samples, args.seq_len, args.pack)
    print(f"calibration {data}: {time.perf_counter() - t0:.0f} s", flush=True)
    mid = sorted(args.steps)[len(args.steps) // 2]
    auto = str(gram_dtype_on("cpu")).removeprefix("torch.")  # what the tool's fits use here
    variants = [("wsvd", 0, None, None, None, None, None)]
    variants += [("sine", s, 100.0, lr, None, None, auto) for s in args.steps for lr in args.lrs]
    variants += [("sine", mid, om, FIT_LR, None, None, auto) for om in args.omegas if om != 100.0]
    variants += [("sine", max(args.steps), 100.0, FIT_LR, f, None, auto) for f in args.gram_fracs]
    variants += [("sine", max(args.steps), 100.0, FIT_LR, None, sh, auto) for sh in args.linear_shares]
    variants += [("sine", max(args.steps), 100.0, FIT_LR, None, None, d) for d in args.gram_dtypes if d != auto]
    rows = []
    for method, steps, om, lr, frac, share, dtype in variants:
        errs, secs = [], 0.0
        for b in args.blocks:
            for name in LAYERS:
                w, g = grams[b][name]
                m, n = w.shape
                k = rank_for_ratio(m, n, args.param_ratio, method)
                t = time.perf_counter()
                lin = split_rank(k, LINEAR_FRACTION if share is None else share) if method == "sine" else 0
                r = fit_calibrated(w, g, method, k, lin, om, steps=steps,
                                   lr=FIT_LR if lr is None else lr, gram_rank=None if frac is None else int(n * frac),
                                   gram_dtype=None if dtype is None else getattr(torch, dtype))
                secs += time.perf_counter() - t
                errs.append(r["act_error"])
        row = {"method": method, "steps": steps, "omega": om, "lr": lr, "frac": frac, "share": share, "dtype": dtype,
               "mean_act_error": sum(errs) / len(errs), "errors": errs, "seconds": secs}
        print(f"{method:5s} steps={steps:4d} ω={om} lr={lr} gram={frac or 'full'} share={share or 'default'} product={dtype}: "
              f"mean act error {row['mean_act_error']:.6f}  {secs:.1f} s", flush=True)
        rows.append(row)
    if not args.no_write:
        info = machine_info()
        lines = [f"## {args.section}", "", f"SmolLM2-135M blocks {', '.join(map(str, args.blocks))} ({len(LAYERS)} layers each), ranks of "
                 f"`--param-ratio {args.param_ratio:g}`, Grams of the original blocks' inputs ({data}). Mean "
                 "activation error ‖(Ŵ−W)L‖/‖WL‖ over the layers; fit time summed over them.", "",
                 "| method | fit steps | ω | fit lr | Gram | Gram product | linear share | mean act. error | fit time (s) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            om = "-" if r["omega"] is None else f"{r['omega']:g}"
            lr = "-" if r["lr"] is None else f"{r['lr']:g}"
            gram = "full" if r["frac"] is None else f"top {r['frac']:g}·n"
            share = "-" if r["method"] != "sine" else f"{LINEAR_FRACTION if r['share'] is None else r['share']:g}"
            lines.append(f"| {r['method']} | {r['steps']} | {om} | {lr} | {gram} | {r['dtype'] or '-'} | {share} "
                         f"| {r['mean_act_error']:.6f} "
                         f"| {r['seconds']:.1f} |")
        if args.linear_shares or args.gram_dtypes:  # per layer: whitened SVD, then the sine fits at the most steps
            shown = [rows[0]] + [r for r in rows if r["method"] == "sine" and r["steps"] == max(args.steps)
                                 and r["omega"] == 100.0 and r["lr"] == FIT_LR and r["frac"] is None]
            head = ["wsvd"] + [f"sine, share {LINEAR_FRACTION if r['share'] is None else r['share']:g}, {r['dtype']}"
                               for r in shown[1:]]
            lines += ["", "Per layer (activation error):", "", "| layer | " + " | ".join(head) + " |",
                      "|---|" + "---|" * len(head)]
            names = [f"{b}.{n}" for b in args.blocks for n in LAYERS]
            for j, name in enumerate(names):
                lines.append(f"| {name} | " + " | ".join(f"{r['errors'][j]:.4f}" for r in shown) + " |")
        cmd = "PYTHONPATH=. python benchmarks/smollm_fit_steps.py " + " ".join(sys.argv[1:])
        lines += ["", f"Command: `{cmd.strip()}`. {machine_line(info)} Load average {load:.2f} at the start."]
        write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
