"""What bounding the whole-model tune's held teacher states costs: all-MiniLM-L6-v2's 12 MLP matrices fitted
as sine at rank k (the CLI's defaults), then tuned 200 steps on all the built-in text with the teacher's
states held up to each budget (``distill(held_mib=...)``; 0 reruns the teacher on every batch). Each budget
runs in its own process, so its peak RSS is its own.

    PYTHONPATH=. python benchmarks/teacher_states.py --held-mib 1024 0 --section teacher_states
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import load_average, provenance, write_section  # noqa: E402
from _minilm import embed, experiment, quality  # noqa: E402
from minilm_quality import sine_student  # noqa: E402

from sinecompress.config import WHOLE_MODEL_TEXTS  # noqa: E402
from sinecompress.pipeline.distill import distill  # noqa: E402


def one(args) -> dict:
    e = experiment(WHOLE_MODEL_TEXTS, args.heldout)
    student = sine_student(e, args.k, args.fit_steps)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    t0 = time.perf_counter()
    r = distill(student, e.model, e.calib, e.names, steps=args.ft_steps, held_mib=args.one)
    seconds = time.perf_counter() - t0
    q = quality(e.ref, embed(student, e.held))
    return {"held_mib_budget": args.one, **r["teacher_states"], "tune_seconds": round(seconds, 1),
            "cosine": round(q["cosine"], 4), "peak_rss_mib_before_tune": before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-mib", type=float, nargs="+", default=[1024, 0])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--section", default="teacher_states")
    ap.add_argument("--one", type=float, help=argparse.SUPPRESS)  # the child: one budget
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    load = load_average()
    rows = []
    for budget in args.held_mib:
        cmd = [sys.executable, __file__, "--one", str(budget), "--k", str(args.k), "--fit-steps", str(args.fit_steps),
               "--ft-steps", str(args.ft_steps), "--heldout", str(args.heldout)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"## {args.section}", "",
             f"{provenance(load)} all-MiniLM-L6-v2, 12 MLP "
             f"matrices as sine at k = {args.k} ({args.fit_steps} fit steps), then {args.ft_steps} tuning steps on "
             f"{WHOLE_MODEL_TEXTS} texts at most (all the built-in text); one process per budget.", "",
             "| held budget MiB | batches held | MiB held | batches rerun | tune seconds | mean cosine | "
             "peak RSS before the tune MiB | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['held_mib_budget']:g} | {r['held']} | {r['held_mib']:.0f} | {r['recomputed']} | "
              f"{r['tune_seconds']} | {r['cosine']:.4f} | {r['peak_rss_mib_before_tune']:,} | {r['peak_rss_mib']:,} |"
              for r in rows]
    md = "\n".join(lines)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
