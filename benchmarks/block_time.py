"""Where a block's time goes under the defaults: SmolLM2-135M with only the chosen blocks' 7 linear layers
compressed (`--param-ratio 0.8`, every other setting at its default), and each block's record from the
`factorize --json` summary: its whole time, its layers' fits, its tune, and the rest (running the
calibration rows through the original and the compressed block, the Grams).

    PYTHONPATH=. python benchmarks/block_time.py --blocks 0 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import cap_prefix, machine_line, write_section  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 15])
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more factorize flags")
    ap.add_argument("--section", default="block_time")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    target = rf"model\.layers\.({'|'.join(map(str, args.blocks))})\..*"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "sinecompress", "factorize", "example:smollm2", "--param-ratio", "0.8",
               "--target", target, "--out", str(Path(tmp) / "out"), "--json", *args.extra]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"factorize failed ({r.returncode}):\n{r.stderr[-3000:]}")
    summary = json.loads(r.stdout)
    blocks = [b for b in summary["finetune"]["blocks"] if b["layers"]]
    fell = [x for x in summary["layers"] if x.get("fell_back")]
    lines = [f"## {args.section}", "",
             "SmolLM2-135M-Instruct, the 7 linear layers of the blocks shown compressed with the defaults "
             f"(`--param-ratio 0.8`{' ' + ' '.join(args.extra) if args.extra else ''}); per block, from the "
             "`factorize --json` summary: its whole time, its layers' fits, its tune, and the rest (calibration "
             "rows through the original and compressed block, Grams), and its block-output error before and after the "
             "tune (on the calibration rows).", "",
             f"{machine_line()} Load average at the start: {load}.", "",
             "| block | whole | fits | tune | rest | block error: start → end |", "|---|---|---|---|---|---|"]
    for b in blocks:
        rest = b["seconds"] - b["fit_seconds"] - b.get("tune_seconds", 0.0)
        lines.append(f"| {b['block']} | {b['seconds']:.1f} s | {b['fit_seconds']:.1f} s "
                     f"({b['fit_seconds'] / b['seconds']:.0%}) | {b.get('tune_seconds', 0.0):.1f} s "
                     f"({b.get('tune_seconds', 0.0) / b['seconds']:.0%}) | {rest:.1f} s | "
                     f"{b.get('loss_start', float('nan')):.6f} → {b.get('loss_end', float('nan')):.6f}"
                     f"{' (undone)' if b.get('undone') else ''} |")
    if summary["method"] == "sine":  # the sine fits that whitened SVD beat (``--fallback``)
        lines += ["", "Layers stored as whitened SVD, which fitted them better than the sine hybrid (each fit's "
                  "activation error, before the tune): " + (", ".join(
                      f"{x['name'].removeprefix('model.layers.')} (sine {x['sine_act_error']:.4f}, whitened SVD "
                      f"{x['start_act_error']:.4f})" for x in fell) or "none") + "."]
    lines += ["", f"Command: `{cap_prefix()}PYTHONPATH=. python benchmarks/block_time.py {' '.join(sys.argv[1:])}`."]
    print("\n".join(lines))
    if not args.no_write:
        write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
