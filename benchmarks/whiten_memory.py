"""Memory and time of one whitened-SVD fit of a wide layer, two routes to the same factors:

* cholesky  the SVD of W L (L = chol(XᵀX + λI)), mapped back with L⁻¹, error ‖(Ŵ − W) L‖ (the route up to
            commit 5381e7c, still the sine hybrid's start)
* gram      the eigenvectors of the smaller of W G Wᵀ and (W L)ᵀ(W L), error tr(E G Eᵀ) by blocks of rows
            (``fit_calibrated(..., "wsvd")`` now)

Each route runs in its own process on the same random layer and Gram (held before the measurement), so
the peak RSS above that baseline is the fit's own transient memory. Default shape: TinyLlama-1.1B's
``down_proj`` (2048×5632, 5632² float64 Gram).

    PYTHONPATH=. python benchmarks/whiten_memory.py                    # writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/whiten_memory.py --shape 5632 2048 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, publish  # noqa: E402

MIB = 2**20


def _resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def one(route: str, m: int, n: int, rank: int) -> dict:
    """In this process: build the layer and Gram, then fit once by ``route``."""
    import torch

    from sinecompress.fit.whiten import (
        activation_error,
        chol,
        gram_whitened_svd,
        whitened_error,
        whitened_svd,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, n, generator=g, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    gram = x.T @ x
    del x
    w = torch.randn(m, n, generator=g) / n**0.5
    torch.linalg.svd(torch.randn(64, 64))  # load LAPACK before the baseline
    base = _resident_mib()
    t0 = time.perf_counter()
    if route == "cholesky":
        L = chol(gram)
        u, v = whitened_svd(w, L, rank)
        err = whitened_error(u @ v.T, w, L)
    else:
        u, v, _ = gram_whitened_svd(w, gram, rank)
        err = activation_error(u @ v.T, w, gram)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"route": route, "seconds": seconds, "transient_mib": peak - base, "act_error": err,
            "w_hat": (u @ v.T).double()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[2048, 5632], metavar=("M", "N"))
    ap.add_argument("--rank", type=int, default=1200)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--route", help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    m, n = args.shape
    if args.route:
        import torch

        r = one(args.route, m, n, args.rank)
        torch.save(r.pop("w_hat"), args.save)
        print(json.dumps(r))
        return
    info = {**machine_info(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    import tempfile

    import torch

    rows, products = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for route in ("cholesky", "gram"):
            save = str(Path(tmp) / f"{route}.pt")
            out = subprocess.run([sys.executable, __file__, "--shape", str(m), str(n), "--rank", str(args.rank),
                                  "--route", route, "--save", save], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.splitlines()[-1]))
            products[route] = torch.load(save)
    diff = float((products["gram"] - products["cholesky"]).norm() / products["cholesky"].norm())
    lines = [f"## whiten_memory_{m}x{n}", "",
             f"One whitened-SVD fit of a {m}×{n} layer at rank {args.rank} (random weights, a {n}² float64 Gram of "
             "4096 anisotropic inputs held before the measurement), each route in its own process; transient = "
             "peak RSS above the resident size just before the fit.", "",
             f"{machine_line(info)} Load average at the start: {info['load']}.", "",
             "| route | time | transient memory | activation error |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['route']} | {r['seconds']:.1f} s | {r['transient_mib']:,.0f} MiB | {r['act_error']:.6f} |")
    lines += ["", f"The two fits' products differ by {diff:.1e} relative (Frobenius).", "",
              f"Command: `PYTHONPATH=. python benchmarks/whiten_memory.py --shape {m} {n} --rank {args.rank}`."]
    publish(f"whiten_memory_{m}x{n}", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
