"""The README's first command, timed, under each fine-tune mode; quality as `sinecompress eval` reports it.

Each row runs, as a user would,

    sinecompress factorize example:minilm --rank 32 --target 'encoder\\.layer\\.\\d+\\.(intermediate|output)\\.dense'
                 --out DIR --finetune MODE

in a subprocess (wall time, and peak RSS from its rusage), then `sinecompress.report.evaluate(DIR,
against="example:minilm")` on the built-in held-out text: mean / worst cosine between compressed and original
sentence embeddings, and top-1 nearest-neighbour agreement. MODE "block" tunes each encoder block against the
original block's outputs as the calibration walks the model; "global" (what `--finetune auto`, the default,
picks for an encoder) tunes all factors at once against the whole original model's output; "none" stops after
the calibrated fits.

    PYTHONPATH=. python benchmarks/readme_minilm.py                        # all three modes, writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/readme_minilm.py --modes block --no-write
    PYTHONPATH=. python benchmarks/readme_minilm.py --modes global --section readme_minilm_default
    PYTHONPATH=. python benchmarks/readme_minilm.py --modes global --extra "--calib-samples 256" --section S
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, write_section  # noqa: E402
from smollm_ppl import timed_cli  # noqa: E402

from sinecompress.report.evaluate import evaluate  # noqa: E402

TARGET = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"
README = ["factorize", "example:minilm", "--rank", "32", "--target", TARGET]


def run(args) -> list[dict]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="readme_minilm-"))
    try:
        for mode in args.modes:
            out = work / mode
            summary = work / f"{mode}.json"
            t = timed_cli([*README, "--out", str(out), "--finetune", mode, *shlex.split(args.extra), "--json"],
                          summary=summary)
            s = json.loads(summary.read_text())
            q = evaluate(str(out), against="example:minilm")["agreement"]
            row = {"finetune": mode, **t, **{k: q[k] for k in ("cosine", "cosine_min", "nn_agreement", "texts")},
                   "calib_samples": s["calibration"]["samples"],
                   "teacher_states": (s["finetune"] or {}).get("teacher_states")}
            print(json.dumps(row), flush=True)
            rows.append(row)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows: list[dict], info: dict, args) -> str:
    lines = ["## readme_minilm", "",
             "The README's first command (all 12 MLP matrices of all-MiniLM-L6-v2, total rank 32: 7,077,888 → "
             "748,800 parameters) under each `--finetune` mode, then `sinecompress eval --against example:minilm` "
             f"on the built-in held-out text ({rows[0]['texts']} texts). Time and peak RSS of the factorize process "
             "(its rusage)." + (f" Extra flags: `{args.extra}`." if args.extra else ""), "",
             f"{machine_line(info)} Load average at the start: {info['load']}.", "",
             "`calibration`: the samples read; `teacher states`: the whole-model tune's teacher states held "
             "(batches, MiB) and rerun (batches).", "",
             "| --finetune | calibration | teacher states | time | peak RSS | mean cosine | worst cosine | NN agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ts = r["teacher_states"]
        held = "-" if not ts else f"{ts['held']}, {ts['held_mib']:,.0f} MiB; {ts['recomputed']} rerun"
        lines.append(f"| {r['finetune']} | {r['calib_samples']:,} | {held} | {r['seconds'] / 60:.1f} min | "
                     f"{r['peak_rss_mib']:,} MiB | {r['cosine']:.4f} | {r['cosine_min']:.4f} | {r['nn_agreement']:.3f} |")
    lines += ["", f"Command: `PYTHONPATH=. python benchmarks/readme_minilm.py {shlex.join(sys.argv[1:])}`.".replace(" `.", "`.")]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=["block", "global", "none"], choices=["block", "global", "none"])
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--extra", default="", help="more factorize flags for every row, e.g. \"--calib-samples 256\"")
    ap.add_argument("--section", default="readme_minilm", help="BENCHMARKS.md section to (re)write")
    args = ap.parse_args()
    info = {**machine_info(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    t0 = time.time()
    md = table(run(args), info, args) + f"\n\nWhole run: {(time.time() - t0) / 60:.0f} min."
    print(md)
    if not args.no_write:
        write_section(args.section, md.replace("## readme_minilm", f"## {args.section}", 1))


if __name__ == "__main__":
    main()
