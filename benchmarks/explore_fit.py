"""Exploration of fit designs on all 12 MLP matrices of all-MiniLM-L6-v2 (the table in docs/fitting-measurements.md).

Each row: a fit variant at one total budget k (parameters ≤ a rank-k linear factorisation), scored by
the mean whitened (activation) error over the 12 layers and, optionally, the held-out embedding cosine.

    PYTHONPATH=. python benchmarks/explore_fit.py --k 32 128 --variants wsvd hybrid:100:0.5 --eval
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _minilm import batches_for, embed, layer_module, minilm, mlp_names, quality  # noqa: E402

from sinecompress.calib.capture import capture_grams  # noqa: E402
from sinecompress.fit.sine import fit_hybrid  # noqa: E402
from sinecompress.fit.svd import truncated_svd  # noqa: E402
from sinecompress.fit.whiten import chol, whitened_error, whitened_svd  # noqa: E402
from sinecompress.nn.surgery import swap_module  # noqa: E402
from sinecompress.pipeline.distill import distill  # noqa: E402
from sinecompress.weights import sine_weight  # noqa: E402


def fit_variant(variant: str, w, gram, k: int, steps: int, damp: float, seed: int = 0, device="cpu"):
    """variant: svd | wsvd | hybrid:OMEGA:LINFRAC[:LR[:AMPSCALE[:PHASE[:STD]]]] (PHASE: residual | random; STD in rad)"""
    w = w.to(device)
    L = chol(gram.to(device), damp)
    m, n = w.shape
    if variant == "svd":
        u, v = truncated_svd(w, k)
        return "lowrank", {"u": u.cpu(), "v": v.cpu()}, whitened_error(u @ v.T, w, L), None
    if variant == "wsvd":
        u, v = whitened_svd(w, L, k)
        return "lowrank", {"u": u.cpu(), "v": v.cpu()}, whitened_error(u @ v.T, w, L), None
    parts = variant.split(":")
    omega, frac = float(parts[1]), float(parts[2])
    lr = float(parts[3]) if len(parts) > 3 else 1e-2
    amp_scale = float(parts[4]) if len(parts) > 4 else 1.0
    phase = parts[5] if len(parts) > 5 else "residual"
    phase_std = float(parts[6]) if len(parts) > 6 else 1.0
    total = k - 1  # the amplitude (m params) costs less than one rank: stay within rank-k's budget
    k_l = int(round(total * frac))
    f = fit_hybrid(w, L, total, k_l, omega, steps=steps, seed=seed, lr=lr, amp_scale=amp_scale,
                   phase=phase, phase_std=phase_std)
    f = {k2: (t.cpu() if t is not None else None) for k2, t in f.items() if k2 in ("u", "v", "amp", "lin_u", "lin_v")}
    err = whitened_error(sine_weight(*(f[x].to(device) for x in ("u", "v")), omega, f["amp"].to(device),
                                     *(f[x].to(device) if f[x] is not None else None for x in ("lin_u", "lin_v"))), w, L)
    return "sine", f, err, omega


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--variants", nargs="+", default=["svd", "wsvd", "hybrid:100:0.5"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--damp", type=float, default=1e-2)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--layers", type=int, default=12, help="fit only the first N MLP matrices (no --eval)")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--ft-steps", type=int, default=0)
    ap.add_argument("--ft-lr", type=float, default=1e-2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, d = minilm()
    names = mlp_names(model)[: args.layers]
    calib = batches_for(d, "calib", args.calib)
    model.to(args.device)
    grams = capture_grams(model, names, calib, args.device)
    held = batches_for(d, "heldout", args.heldout) if args.eval else None
    ref = embed(model, held) if args.eval else None
    mods = dict(model.named_modules())
    rows = []
    for k in args.k:
        for variant in args.variants:
            t0 = time.perf_counter()
            errs, fitted = [], {}
            for name in names:
                w = mods[name].weight.detach().float()
                kind, f, err, omega = fit_variant(variant, w, grams[name]["gram"], k, args.steps, args.damp,
                                                  device=args.device)
                errs.append(err)
                fitted[name] = (kind, f, omega)
            row = {"k": k, "variant": variant, "act_error": sum(errs) / len(errs),
                   "fit_s": round(time.perf_counter() - t0, 1)}
            if args.eval:
                student = copy.deepcopy(model)
                for name, (kind, f, omega) in fitted.items():
                    swap_module(student, name, layer_module(kind, f, mods[name].bias.detach().cpu(), omega))
                student.to(args.device)
                row.update(quality(ref, embed(student, held)))
                if args.ft_steps:
                    r = distill(student, model, calib, names, steps=args.ft_steps, lr=args.ft_lr,
                                device=args.device)
                    q = quality(ref, embed(student, held))
                    row.update({"ft_cosine": q["cosine"], "ft_nn": q["nn_agreement"],
                                "ft_loss": [round(r["loss_start"], 4), round(r["loss_end"], 4)],
                                "ft_s": round(r["seconds"], 1)})
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
