"""How much ``--allocate sensitivity``'s ranks depend on its random probes, on SmolLM2-135M.

The output sensitivity of each layer is a Hutchinson estimate: one Gaussian probe of the hidden states per
piece of 512 calibration tokens (``allocate.output_sensitivity``). This script measures it on the whole
model with several probe seeds (and with the single probe stream used before commit 0d4c7ec), allocates the
ranks of all 210 linear layers at 20 % and 40 % removed from each, and reports how far apart the estimates
and the allocations are:

* spread: per layer, the standard deviation of the estimate over the seeds / its mean (median and max);
* moved: for two seeds, the share of the parameter budget that the two allocations place differently
  (Σ |Δrank| (m + n) / 2 / budget);
* block by block: the largest relative difference between the whole-model estimates and those of the
  block-by-block pass (``stack_sensitivity``, what a block-path run uses) with the first seed.

    PYTHONPATH=. python benchmarks/sensitivity_noise.py            # seeds 0 1 2, writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/sensitivity_noise.py --seeds 0 1 --no-write
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, write_section  # noqa: E402

from sinecompress.calib.capture import capture_grams  # noqa: E402
from sinecompress.calib.data import load_calibration  # noqa: E402
from sinecompress.config import CalibrationConfig, make_config  # noqa: E402
from sinecompress.io.hf_model import dense_model  # noqa: E402
from sinecompress.io.open import open_source  # noqa: E402
from sinecompress.pipeline import allocate as al  # noqa: E402
from sinecompress.pipeline.plan import build_plan  # noqa: E402
from sinecompress.pipeline.stack import open_stack  # noqa: E402
from sinecompress.pipeline.stack_sensitivity import stack_sensitivity  # noqa: E402

MODEL = "example:smollm2"


def single_stream(seed: int):
    """The probes as drawn before 0d4c7ec: one generator, pieces in order, hidden states in order."""
    g = torch.Generator().manual_seed(seed)
    return lambda _seed, _piece, _hidden: g


def moved(a: dict, b: dict, pool, budget: int) -> float:
    return sum(abs(a[lp.name] - b[lp.name]) * sum(lp.shape) for lp in pool) / 2 / budget


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    info = machine_info()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    src = open_source(MODEL)
    model = dense_model(src).eval()
    data = load_calibration(None, src.side_dir(), 256, 128)
    plans = {r: build_plan(src, make_config(param_ratio=1 - r / 100, method="wsvd")) for r in (20, 40)}
    pool = {r: al.sensitivity_pool(p) for r, p in plans.items()}
    names = [lp.name for lp in pool[20]]
    grams = capture_grams(model, names, data.batches)
    shares = {n: al.energy_share(model.get_submodule(n).weight.detach(), grams[n]["gram"]) for n in names}
    del grams
    runs = {}
    for label, seed, draw in [*((f"seed {s}", s, None) for s in args.seeds), ("single stream, seed 0", 0, "old")]:
        t = time.perf_counter()
        original = al.probe_draw
        if draw == "old":
            al.probe_draw = single_stream(seed)
        try:
            weights = al.output_sensitivity(model, names, data.batches, seed)
        finally:
            al.probe_draw = original
        ranks = {r: al.allocate(pool[r], shares, sum(lp.factored_params for lp in pool[r]), weights) for r in pool}
        runs[label] = {"weights": weights, "ranks": ranks, "seconds": time.perf_counter() - t}
        print(label, f"{runs[label]['seconds']:.0f} s", flush=True)
    t = time.perf_counter()
    st = open_stack(src, CalibrationConfig(), "cpu")
    inside, _ = st.split(pool[20])
    with tempfile.TemporaryDirectory() as scratch:
        stack_shares, stack_weights = stack_sensitivity(st, inside, "cpu", Path(scratch), args.seeds[0])
    first = runs[f"seed {args.seeds[0]}"]["weights"]
    apart = max(abs(stack_weights[n] - first[n]) / first[n] for n in names)
    shares_apart = max(float((stack_shares[n] - shares[n]).abs().max()) for n in names)
    stack_seconds = time.perf_counter() - t
    seeds = [f"seed {s}" for s in args.seeds]
    spread = [statistics.pstdev([runs[s]["weights"][n] for s in seeds]) /
              statistics.fmean([runs[s]["weights"][n] for s in seeds]) for n in names]
    lines = [f"Whole-model output sensitivity of SmolLM2-135M's 210 linear layers (256 × 128 calibration tokens of the "
             f"built-in text, one probe per 512-token piece: 64 probes), measured with probe seeds "
             f"{', '.join(map(str, args.seeds))} and with the single probe stream used before 0d4c7ec; ranks "
             "allocated by each (`allocate.allocate`, whitened spectra) at 20 % and 40 % removed.", "",
             f"{machine_line(info)} Load average at the start: {load}.", "",
             f"Per-layer spread of the estimate over the seeds (std / mean): median {statistics.median(spread):.2f}, "
             f"max {max(spread):.2f}.", "",
             "| pair | budget placed differently, 20 % | 40 % |", "|---|---|---|"]
    for a, b in itertools.combinations(runs, 2):
        lines.append(f"| {a} / {b} | " + " | ".join(
            f"{100 * moved(runs[a]['ranks'][r], runs[b]['ranks'][r], pool[r], sum(lp.factored_params for lp in pool[r])):.1f} %"
            for r in (20, 40)) + " |")
    lines += ["", f"Block by block (seed {args.seeds[0]}, {stack_seconds:.0f} s including the calibration forward): "
              f"largest relative difference from the whole-model estimate {apart:.1e}; largest difference of an "
              f"energy share {shares_apart:.1e}."]
    secs = ", ".join(f"{run['seconds']:.0f}" for run in runs.values())
    lines += ["", f"Seconds per pass: {secs}. Whole run: "
              f"{(time.perf_counter() - t0) / 60:.1f} min.", "",
              f"Command: `PYTHONPATH=. python benchmarks/sensitivity_noise.py --seeds {' '.join(map(str, args.seeds))}`."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("sensitivity_noise", "## sensitivity_noise\n\n" + text + "\n")


if __name__ == "__main__":
    main()
