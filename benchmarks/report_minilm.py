"""How long `sinecompress report` takes on MiniLM, and what it shows for a rank-8 sine factorisation.

Factorises the 12 MLP matrices of all-MiniLM-L6-v2 at total rank 8 (sine + linear half, ω = 100),
then times `report` on the dense model and on the compressed file against the original, and lists
per-layer ranks and errors. Reuse an existing rank-8 file with --compressed to skip the fit.

    python benchmarks/report_minilm.py [--quick] [--json] [--compressed /tmp/m8.safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import machine_info, machine_line, write_section  # noqa: E402

from sinecompress import factorize  # noqa: E402
from sinecompress.io.examples import example_dir  # noqa: E402
from sinecompress.report.report import report  # noqa: E402

TARGET = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"
RANK, OMEGA = 8, 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 fit steps instead of 300 (timings of report unchanged)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--compressed", type=Path, help="an existing rank-8 factorisation of MiniLM to reuse")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    original = example_dir("minilm") / "model.safetensors"
    steps = 20 if args.quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        comp = args.compressed
        fit_s = None
        if comp is None:
            comp = Path(tmp) / "m8.safetensors"
            t0 = time.perf_counter()
            factorize(original, comp, rank=RANK, omega=OMEGA, targets=[TARGET], fit_steps=steps, seed=0)
            fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dense = report(original)
        dense_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = report(comp, against=original)
        comp_s = time.perf_counter() - t0
    layers = [{"name": r["name"], "shape": r["shape"], "rank": r["rank"], "omega": r["omega"],
               "numerical_rank": r["numerical_rank"], "effective_rank": r["effective_rank"],
               "uv_rank": r["spectra"]["uv"]["numerical_rank"], "sine_rank": r["spectra"]["sine"]["numerical_rank"],
               "rel_error": r["rel_error"],
               "svd_rel_error": next(k["rel_error"] for k in r["keep"] if k["rank"] == r["rank"])}
              for r in rep["layers"]]
    res = {"machine": machine_info(), "load_average_1min": os.getloadavg()[0],
           "fit_steps": None if args.compressed else steps, "fit_seconds": fit_s,
           "report_dense_seconds": round(dense_s, 2), "report_dense_layers": len(dense["layers"]),
           "report_compressed_seconds": round(comp_s, 2), "report_compressed_layers": len(rep["layers"]),
           "params_before": rep["params_before"], "params_after": rep["params_after"],
           "compression_rate": rep["compression_rate"], "layers": layers}
    if args.json:
        print(json.dumps(res, indent=1))
    md = [f"`python benchmarks/report_minilm.py{' --quick' if args.quick else ''}` — all-MiniLM-L6-v2, "
          f"12 MLP matrices at total rank {RANK} (4 linear + 4 sine), ω = {OMEGA:g}"
          + (f", {steps} fit steps." if not args.compressed else
             " (file from `sinecompress factorize ... --rank 8`, 300 fit steps)."),
          "",
          f"`report` of the dense model ({len(dense['layers'])} layers): **{dense_s:.1f} s**; "
          f"of the compressed file `--against` the original ({len(rep['layers'])} layers, 4 spectra each): "
          f"**{comp_s:.1f} s** (1-min load average {res['load_average_1min']:.1f} on this machine while it ran).",
          "",
          "| layer | shape | rank UVᵀ | rank sin(ω·UVᵀ) | rank Ŵ | eff. rank Ŵ | rel. error | SVD rank 8 rel. error |",
          "|---|---|---|---|---|---|---|---|"]
    for r in layers:
        md.append(f"| {r['name']} | {r['shape'][0]}×{r['shape'][1]} | {r['uv_rank']} | {r['sine_rank']} | "
                  f"{r['numerical_rank']} | {r['effective_rank']:.1f} | {r['rel_error']:.4f} | {r['svd_rel_error']:.4f} |")
    md += ["", "Numerical rank: σ_i > max(m, n)·eps(float32)·σ_max (numpy's rule). "
           "Weight-space errors; see the fit benchmarks for activation-space quality.", "",
           machine_line(res["machine"])]
    if not args.no_write:
        write_section("report_minilm", "\n".join(md))
    print("\n".join(md), file=sys.stderr)


if __name__ == "__main__":
    main()
