"""Perplexity of SmolLM2-135M-Instruct (the bundled GGUF, dequantized) compressed at a share of the
parameters of all 210 linear layers removed (the SVD-LLM convention: 20 % removed = --param-ratio 0.8).

Every row runs the tool itself, as a user would (`sinecompress factorize ...` in a subprocess, timed
by its own rusage, read with os.wait4: wall time and peak RSS), then `sinecompress.report.evaluate` on the built-in
held-out text with its defaults (the same numbers `sinecompress eval` prints):

* svd        plain truncated SVD of each weight (no calibration)
* wsvd       whitened SVD (SVD-LLM) fitted block by block to what each layer sees, no tuning
* wsvd+ft    the same, each block tuned against the original block's outputs (--finetune block)
* sine+ft    the sine hybrid, same calibration and the same block tuning (fewer fit steps, fixed ω)
* sine       the tool's defaults: the sine hybrid (300 fit steps) and the same block tuning

    PYTHONPATH=. python benchmarks/smollm_ppl.py                     # 20/40/60 %, writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/smollm_ppl.py --removed 20 --methods wsvd+ft sine+ft --no-write
    PYTHONPATH=. python benchmarks/smollm_ppl.py --removed 40 60 --methods svd wsvd wsvd+ft sine --section smollm_ppl_40_60

On a GPU machine without the package, `--model PATH` names the GGUF file itself, and `--extra --device cuda`
runs the fits and tunes there; the table then has the card's peak memory from each row's summary
(benchmarks/device_smollm.sh runs it in one call).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import cap_prefix, machine_info, machine_line, write_section  # noqa: E402

from sinecompress.report.evaluate import evaluate  # noqa: E402

MODEL = "example:smollm2"
METHODS = {
    "svd": ["--method", "svd", "--no-calib"],
    "wsvd": ["--method", "wsvd", "--finetune", "none"],
    # The block tune at its defaults, the same one the sine row gets (sections before commit f4c30e2 name
    # `--steps 32`, the default of their day, as a flag). sine+ft fixes ω and shortens each layer's fit.
    "wsvd+ft": ["--method", "wsvd", "--finetune", "block"],
    "sine+ft": ["--method", "sine", "--finetune", "block", "--steps", "32", "--fit-steps", "100", "--omega", "100"],
    "sine": ["--method", "sine"],  # every other setting at its default: what `factorize --param-ratio R` does
}


def timed_cli(args: list[str], summary: Path | None = None) -> dict:
    """Run the CLI in a child process; wall seconds and peak RSS (MiB) of that process, and the card's peak
    memory where its ``--json`` summary has one. With ``summary``, what the command printed is kept there."""
    cmd = [sys.executable, "-m", "sinecompress", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # that child's own rusage, as /usr/bin/time reads it
        code = child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}):\n{stderr[-3000:]}")
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(stdout)
    try:
        gpu = json.loads(stdout).get("peak_gpu_mib")
    except ValueError:
        gpu = None
    return {"seconds": round(wall, 1), "peak_rss_mib": usage.ru_maxrss // 1024,
            **({"peak_gpu_mib": gpu} if gpu else {})}


def run(args, on_row=lambda rows, dense: None) -> list[dict]:
    """Every row; ``on_row(rows so far, dense)`` after each, so a long run that is stopped keeps its rows."""
    rows = []
    dense = evaluate(args.model)
    rows.append({"method": "dense", "removed": 0, "perplexity": dense["model"]["perplexity"], "ratio": 1.0})
    work = Path(tempfile.mkdtemp(prefix="smollm_ppl-"))
    try:
        for removed in args.removed:
            for method in args.methods:
                out = work / f"{method}-{removed}"
                extra = [*METHODS[method], *args.extra]
                t = timed_cli(["factorize", args.model, "--param-ratio", f"{1 - removed / 100:g}", "--out", str(out),
                               "--json", *extra],
                              None if args.summaries is None else args.summaries / f"{method}-{removed}.json")
                r = evaluate(str(out))
                ppl = r["model"]["perplexity"]
                row = {"method": method, "removed": removed, "perplexity": ppl,
                       "ratio": ppl / dense["model"]["perplexity"], **t, "flags": " ".join(extra)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                on_row(rows, dense)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, dense


def table(rows: list[dict], dense: dict, info: dict, model: str = MODEL) -> str:
    gpu = any(r.get("peak_gpu_mib") for r in rows)
    if model != MODEL:
        model = Path(model).name
    lines = ["## smollm_ppl", "",
             f"SmolLM2-135M-Instruct (bundled Q4_1 GGUF, dequantized to float32), all 210 linear layers; perplexity "
             f"on {dense['model']['scored_tokens']:,} tokens of the built-in held-out text (`sinecompress eval` "
             f"defaults: window {dense['settings']['window']}). Each row is `sinecompress factorize {model} "
             "--param-ratio R` with the flags shown, then `sinecompress eval`; time and peak RSS of the factorize "
             "process" + (", and the card's peak memory from its summary (allocated / reserved)" if gpu else "") + ".",
             "", f"{machine_line(info)} Load average at the start: {info['load']}.", "",
             "| removed | method | perplexity | × dense | time | peak RSS |" + (" peak GPU |" if gpu else "") + " flags |",
             "|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|"]
    for r in rows:
        if r["method"] == "dense":
            lines.append(f"| 0 % | dense | {r['perplexity']:.2f} | 1.00 | | |" + (" |" if gpu else "") + " |")
            continue
        g = r.get("peak_gpu_mib")
        card = (f" {g['allocated']:,} / {g['reserved']:,} MiB |" if g else " |") if gpu else ""
        lines.append(f"| {r['removed']} % | {r['method']} | {r['perplexity']:.4g} | {r['ratio']:.3g} | "
                     f"{r['seconds'] / 60:.1f} min | {r['peak_rss_mib']:,} MiB |{card} `{r['flags']}` |")
    lines += ["", f"Command: `{cap_prefix()}PYTHONPATH=. python benchmarks/smollm_ppl.py {' '.join(sys.argv[1:])}`.".replace(" `.", "`.")]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--removed", type=int, nargs="+", default=[20, 40, 60], help="share of parameters removed, %%")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more factorize flags for every row")
    ap.add_argument("--summaries", type=Path, help="keep each row's `factorize --json` summary in this folder")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--section", default="smollm_ppl", help="BENCHMARKS.md section to (re)write")
    ap.add_argument("--model", default=MODEL, help="the model to compress: example:smollm2, or its GGUF file's path")
    args = ap.parse_args()
    info = {**machine_info(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    t0 = time.time()
    total = len(args.removed) * len(args.methods)

    def save(rows, dense, done=False):
        tail = (f"Whole run: {(time.time() - t0) / 60:.0f} min." if done else
                f"Partial: {len(rows) - 1} of {total} rows after {(time.time() - t0) / 60:.0f} min (the run goes on).")
        md = table(rows, dense, info, args.model) + "\n\n" + tail
        if not args.no_write:
            write_section(args.section, md.replace("## smollm_ppl", f"## {args.section}", 1))
        return md

    rows, dense = run(args, on_row=save)
    print(save(rows, dense, done=True))


if __name__ == "__main__":
    main()
