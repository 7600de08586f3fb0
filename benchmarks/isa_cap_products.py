"""What an ISA cap does to the products a sine fit runs: a 1536x576 by 576x576 product (SmolLM2's MLP
error times an attention-width Gram) in float32 and in bfloat16, and an elementwise sine of the same
size, timed in a fresh process with no cap and with the kernels capped at AVX2
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`), each cap variable alone
too. `fit.sine.fast_bf16` reads the oneDNN cap from this.

    PYTHONPATH=. python benchmarks/isa_cap_products.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import CAP_VARS, machine_line, write_section  # noqa: E402

CAPS = {"none": {}, "ATEN_CPU_CAPABILITY": {"ATEN_CPU_CAPABILITY": "avx2"},
        "ONEDNN_MAX_CPU_ISA": {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "MKL_ENABLE_INSTRUCTIONS": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        "all three": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}

CHILD = r"""
import json, time, torch
from sinecompress.fit.sine import fast_bf16
def ms(f, n):
    f(); t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1e3
g = torch.Generator().manual_seed(0)
e, G = torch.randn(1536, 576, generator=g), torch.randn(576, 576, generator=g)
eb, Gb = e.bfloat16(), G.bfloat16()
slow = ms(lambda: eb @ Gb, 1) > 50 * ms(lambda: e @ G, 3)  # a reference kernel: time it once or twice only
print(json.dumps({"isa": torch.backends.cpu.get_cpu_capability(), "f32": ms(lambda: e @ G, 20),
                  "bf16": ms(lambda: eb @ Gb, 2 if slow else 20), "sin": ms(lambda: torch.sin(e), 20),
                  "fast_bf16": fast_bf16("cpu")}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", default="isa_cap_products")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    base = {k: v for k, v in os.environ.items() if k not in CAP_VARS}
    rows = []
    for name, caps in CAPS.items():
        r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env={**base, **caps})
        if r.returncode != 0:
            raise SystemExit(f"{name}: {r.stderr[-2000:]}")
        rows.append((name, json.loads(r.stdout)))
    lines = [f"## {args.section}", "",
             "One process per row: a 1536×576 by 576×576 product in float32 and in bfloat16, and `torch.sin` of "
             "a 1536×576 matrix; ms per call. `fast_bf16`: whether the calibrated sine fit would run its Gram "
             "product in bfloat16 there.", "", f"{machine_line()} Load average at the start: {load}.", "",
             "| cap | torch's ISA | float32 product | bfloat16 product | sin | fast_bf16 |", "|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['isa']} | {r['f32']:.2f} ms | {r['bf16']:.2f} ms | {r['sin']:.2f} ms | {r['fast_bf16']} |")
    lines += ["", "Command: `PYTHONPATH=. python benchmarks/isa_cap_products.py`."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
