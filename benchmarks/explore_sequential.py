"""Does sequential fitting (each layer fitted to the outputs of the already-compressed earlier layers)
beat fitting every layer to the original activations? All 12 MLP matrices of all-MiniLM-L6-v2.

    PYTHONPATH=. python benchmarks/explore_sequential.py --k 32 128 --methods wsvd sine --ft-steps 200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _minilm import embed, experiment, layer_module, quality  # noqa: E402

from sinecompress.calib.capture import capture_pair  # noqa: E402
from sinecompress.fit.sine import fit_calibrated  # noqa: E402
from sinecompress.fit.whiten import shifted_target  # noqa: E402
from sinecompress.nn.surgery import swap_module  # noqa: E402
from sinecompress.pipeline.distill import distill  # noqa: E402
from sinecompress.pipeline.plan import split_rank  # noqa: E402


def fit(method, w, gram, k, steps):
    if method == "wsvd":
        f = fit_calibrated(w, gram, "wsvd", k)
        return "lowrank", {"u": f["u"], "v": f["v"]}, None
    total = k - 1
    f = fit_calibrated(w, gram, "sine", total, split_rank(total), 100.0, steps=steps)
    return "sine", {x: f[x] for x in ("u", "v", "amp", "lin_u", "lin_v")}, 100.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--methods", nargs="+", default=["wsvd", "sine"])
    ap.add_argument("--modes", nargs="+", default=["parallel", "sequential"])
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=0)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=1000)
    args = ap.parse_args()
    e = experiment(args.calib, args.heldout)
    model, names, calib, held, grams, ref, mods = e.model, e.names, e.calib, e.held, e.grams, e.ref, e.mods
    for k in args.k:
        for method in args.methods:
            for mode in args.modes:
                t0 = time.perf_counter()
                student = copy.deepcopy(model)
                for name in names:
                    w = mods[name].weight.detach().float()
                    gram = grams[name]["gram"]
                    if mode == "sequential":
                        pair = capture_pair(model, student, name, calib)
                        w, gram = shifted_target(w, pair["gram"], pair["cross"]), pair["gram"]
                    kind, f, omega = fit(method, w, gram, k, args.fit_steps)
                    swap_module(student, name, layer_module(kind, f, mods[name].bias.detach(), omega))
                row = {"k": k, "method": method, "mode": mode, **quality(ref, embed(student, held))}
                if args.ft_steps:
                    distill(student, model, calib, names, steps=args.ft_steps)
                    row.update({f"ft_{m}": v for m, v in quality(ref, embed(student, held)).items()})
                row["seconds"] = round(time.perf_counter() - t0, 1)
                print(json.dumps({x: (round(v, 4) if isinstance(v, float) else v) for x, v in row.items()}),
                      flush=True)


if __name__ == "__main__":
    main()
