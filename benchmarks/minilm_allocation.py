"""Does allocating ranks by sensitivity (``--allocate sensitivity``) beat uniform ranks at the same budget?

All 12 MLP matrices of all-MiniLM-L6-v2, whitened SVD (closed form, so the comparison isolates the
allocation), budget = the parameters of rank k on every layer (``--param-ratio`` k(m+n)/(mn)).
Held-out cosine and NN agreement as in minilm_quality; the mean activation error over the layers.
``--ft-steps N`` adds the calibration fine-tune to both.

    PYTHONPATH=. python benchmarks/minilm_allocation.py --k 32 64 128 192
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, write_section  # noqa: E402
from _minilm import embed, experiment, layer_module, quality  # noqa: E402

from sinecompress.fit.whiten import chol, whitened_error, whitened_svd  # noqa: E402
from sinecompress.nn.surgery import swap_module  # noqa: E402
from sinecompress.pipeline.allocate import allocate, energy_share, output_sensitivity  # noqa: E402
from sinecompress.pipeline.distill import distill  # noqa: E402
from sinecompress.pipeline.plan import LayerPlan  # noqa: E402


def run(args) -> list[dict]:
    e = experiment(args.calib, args.heldout)
    model, names, calib, held, grams, ref, mods = e.model, e.names, e.calib, e.held, e.grams, e.ref, e.mods
    ws = {n: mods[n].weight.detach().float() for n in names}
    Ls = {n: chol(grams[n]["gram"]) for n in names}
    shares = {n: energy_share(ws[n], grams[n]["gram"]) for n in names}
    sens = output_sensitivity(model, names, calib)
    print(json.dumps({"sensitivity": sens}), file=sys.stderr, flush=True)
    layers = [LayerPlan(n, tuple(ws[n].shape), "F32", "wsvd", 1, None) for n in names]
    rows = []
    for k in args.k:
        budget = sum(k * sum(lp.shape) for lp in layers)
        plans = {"uniform": {n: k for n in names}, "spectrum": allocate(layers, shares, budget),
                 "spectrum×output": allocate(layers, shares, budget, sens)}
        plans = {m: plans[m] for m in args.modes}
        for mode, ranks in plans.items():
            student = copy.deepcopy(model)
            errs = []
            for n in names:
                u, v = whitened_svd(ws[n], Ls[n], ranks[n])
                errs.append(whitened_error(u @ v.T, ws[n], Ls[n]))
                swap_module(student, n, layer_module("lowrank", {"u": u, "v": v}, mods[n].bias.detach(), None))
            row = {"k": k, "mode": mode, "params": sum(r * sum(ws[n].shape) for n, r in ranks.items()),
                   "act_error": round(sum(errs) / len(errs), 4),
                   "ranks": [ranks[n] for n in names],
                   **{m: round(v, 4) for m, v in quality(ref, embed(student, held)).items()}}
            if args.ft_steps:
                distill(student, model, calib, names, steps=args.ft_steps)
                row.update({f"ft_{m}": round(v, 4) for m, v in quality(ref, embed(student, held)).items()})
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows, args) -> str:
    ft = args.ft_steps > 0
    head = "| k | allocation | params | mean act. error | cosine | NN agreement |" + (
        " cosine after fine-tune | NN after fine-tune |" if ft else "") + " ranks (intermediate/output, layers 0-5) |"
    lines = [f"{machine_line(machine_info())} Whitened SVD, calibration {args.calib} texts, held-out "
             f"{args.heldout} texts" + (f", fine-tune {args.ft_steps} steps" if ft else "") + ".", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["k"], r["mode"], f"{r['params']:,}", f"{r['act_error']:.4f}", f"{r['cosine']:.3f}",
                 f"{r['nn_agreement']:.3f}"]
        if ft:
            cells += [f"{r['ft_cosine']:.3f}", f"{r['ft_nn_agreement']:.3f}"]
        cells.append(" ".join(map(str, r["ranks"])))
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[32, 64, 128, 192])
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--ft-steps", type=int, default=0)
    ap.add_argument("--modes", nargs="+", default=["uniform", "spectrum", "spectrum×output"])
    args = ap.parse_args()
    rows = run(args)
    write_section("minilm_allocation", "## minilm_allocation\n\nCommand: `PYTHONPATH=. python "
                  f"benchmarks/minilm_allocation.py {' '.join(sys.argv[1:])}`. " + table(rows, args))


if __name__ == "__main__":
    main()
