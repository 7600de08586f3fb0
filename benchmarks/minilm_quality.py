"""Quality at equal parameters on all 12 MLP matrices of all-MiniLM-L6-v2: svd, wsvd, wsvd + the
calibration fine-tune, and sine (hybrid fit + the same fine-tune).

Metrics on held-out text (stdlib docstrings of modules never used for calibration): mean cosine
between compressed and original mean-pooled sentence embeddings, and top-1 nearest-neighbour
agreement; plus wall time and peak memory. "k" is the budget: every method stays within a rank-k
linear factorisation's parameters (the sine layers use total rank k-1 plus their m amplitudes).

    PYTHONPATH=. python benchmarks/minilm_quality.py            # full table, writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/minilm_quality.py --quick --json
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import load_average, machine_info, machine_line, write_section  # noqa: E402
from _minilm import embed, experiment, layer_module, quality  # noqa: E402
from explore_fit import fit_variant  # noqa: E402

from sinecompress.config import WHOLE_MODEL_TEXTS  # noqa: E402
from sinecompress.fit.omega import AUTO_OMEGA  # noqa: E402
from sinecompress.fit.sine import fit_calibrated  # noqa: E402
from sinecompress.nn.surgery import swap_module  # noqa: E402
from sinecompress.pipeline.distill import distill  # noqa: E402
from sinecompress.pipeline.plan import split_rank  # noqa: E402

REFERENCE = {"svd": {32: 0.358, 64: 0.372, 128: 0.482, 192: 0.655},
             "wsvd": {32: 0.595, 64: 0.697, 128: 0.846, 192: 0.923}}
# (fit, fine-tune steps as a multiple of --ft-steps). "wsvd+ft×3" gives the linear baseline about the
# sine row's wall time (its fit and fine-tune steps cost more), for an equal-time comparison.
METHODS = {"svd": ("svd", 0), "wsvd": ("wsvd", 0), "wsvd+ft": ("wsvd", 1), "sine": ("sine", 1),
           "wsvd+ft×3": ("wsvd", 3)}
DEFAULT_METHODS = ["svd", "wsvd", "wsvd+ft", "sine"]


def fit_sine_default(w, gram, k: int, steps: int, fallback: bool = True):
    """What ``sinecompress factorize --method sine`` does with calibration: ω auto (a gauge, fit/omega.py),
    the hybrid at the default linear share, total rank k-1 so the amplitude stays within rank-k's budget,
    and (``fallback``, the CLI's default) the whitened SVD at that rank where it fits better."""
    total = k - 1
    k_l = split_rank(total)
    omega = AUTO_OMEGA
    f = fit_calibrated(w, gram, "sine", total, k_l, omega, steps=steps)
    if fallback and f["wsvd_act_error"] < f["act_error"]:
        return "lowrank", {"u": f["wsvd_u"], "v": f["wsvd_v"]}, f["wsvd_act_error"], None
    return "sine", {x: f[x] for x in ("u", "v", "amp", "lin_u", "lin_v")}, f["act_error"], omega


def sine_student(e, k: int, steps: int):
    """A copy of the experiment's model with every MLP matrix fitted by ``fit_sine_default`` (not tuned)."""
    student = copy.deepcopy(e.model)
    for name in e.names:
        kind, f, _err, omega = fit_sine_default(e.mods[name].weight.detach().float(), e.grams[name]["gram"], k, steps)
        swap_module(student, name, layer_module(kind, f, e.mods[name].bias.detach(), omega))
    return student


def run(args) -> list[dict]:
    e = experiment(args.calib, args.heldout)
    model, names, calib, held, grams, ref, mods = e.model, e.names, e.calib, e.held, e.grams, e.ref, e.mods
    args.calib_texts = sum(b["input_ids"].shape[0] for b in calib)  # the built-in text may hold fewer
    rows = []
    for k in args.k:
        for method in args.methods:
            variant, tune = METHODS[method]
            t0 = time.perf_counter()
            student = copy.deepcopy(model)
            fell = 0
            for name in names:
                w = mods[name].weight.detach().float()
                if variant == "sine":
                    kind, f, _err, omega = fit_sine_default(w, grams[name]["gram"], k, args.fit_steps)
                    fell += kind == "lowrank"
                else:
                    kind, f, _err, omega = fit_variant(variant, w, grams[name]["gram"], k, args.fit_steps, 1e-2)
                swap_module(student, name, layer_module(kind, f, mods[name].bias.detach(), omega))
            if tune:
                distill(student, model, calib, names, steps=args.ft_steps * tune, lr=args.lr)
            q = quality(ref, embed(student, held))
            rows.append({"k": k, "method": method, **{m: round(v, 4) for m, v in q.items()},
                         "reference_cosine": REFERENCE.get(method, {}).get(k),
                         **({"fell_back": fell} if variant == "sine" else {}),
                         "seconds": round(time.perf_counter() - t0, 1),
                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows, args) -> str:
    lines = [f"{machine_line(machine_info())} Load average at the start: {args.load}. "
             f"Calibration {args.calib_texts} texts, held-out {args.heldout} texts, "
             f"fit steps {args.fit_steps}, fine-tune steps {args.ft_steps}"
             + (" (×3 for wsvd+ft×3)" if "wsvd+ft×3" in args.methods else "") + ".", "",
             "`seconds`: fit + fine-tune + held-out embedding of the row; `peak RSS MB`: the process's peak so far "
             "(one process runs every row, so it only grows).", "",
             "`fell back`: the sine row's layers stored as whitened SVD, which fitted them better (`--fallback`).", "",
             "| k | method | cosine | NN agreement | DESIGN.md cosine | fell back | seconds | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = "-" if r["reference_cosine"] is None else f"{r['reference_cosine']:.3f}"
        fell = f"{r['fell_back']} of 12" if "fell_back" in r else "-"
        lines.append(f"| {r['k']} | {r['method']} | {r['cosine']:.3f} | {r['nn_agreement']:.3f} | {ref} | {fell} | "
                     f"{r['seconds']} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[32, 64, 128, 192])
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--section", default="minilm_quality", help="BENCHMARKS.md section to write")
    ap.add_argument("--calib", type=int, default=WHOLE_MODEL_TEXTS,
                    help="calibration texts at most (default: as many as `factorize` reads for a whole-model tune)")
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--quick", action="store_true", help="k=32 only, small text sets, few steps")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    args = ap.parse_args()
    args.load = load_average()
    if args.quick:
        args.k, args.calib, args.heldout, args.fit_steps, args.ft_steps = [32], 64, 200, 20, 10
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    title = f"## {args.section}" + (" (--quick: k=32, small text sets, few steps)" if args.quick else "")
    write_section(args.section, f"{title}\n\nCommand: `PYTHONPATH=. python benchmarks/minilm_quality.py "
                  f"{' '.join(sys.argv[1:])}`. " + table(rows, args))


if __name__ == "__main__":
    main()
