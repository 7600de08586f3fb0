"""Inference cost of a compressed MiniLM: dense vs ``load()``-ed sine layers vs sine layers with a cached Ŵ.

Variants, all all-MiniLM-L6-v2 in eval mode under ``torch.inference_mode``, on one batch of
32 sequences × 128 tokens (random token ids, full attention mask):
  dense   the original model
  sine    ``sinecompress.load(DIR)``: the 12 MLP matrices as SineLowRankLinear (rank 32), Ŵ built every forward
  cached  ``sinecompress.load(DIR, cache_weights=True)``: Ŵ built on the first forward, then reused

Columns: forward_ms  median wall time of one forward over --repeats rounds; the variants run
                     round-robin inside each round so that load from other jobs on a shared machine
                     hits all of them alike (min and max are in the JSON)
         vs_dense    median over rounds of (this variant's time / dense's time in the same round)
         build_ms    (sine row) median time to build all 12 dense Ŵ, timed in the same rounds: the work
                     per forward that the cache removes
         weights_MiB parameters + buffers (+ the cached Ŵ) held by the model, counted exactly
         peak_MiB    peak RSS of a separate process that loads only that variant and runs the same
                     forwards (VmHWM), and fwd_MiB its growth over the RSS measured just before the
                     first forward (activations, the cache, allocator slack)

    python benchmarks/forward_cost.py --compressed DIR   # DIR: factorize output (12 MLP matrices, rank 32)
    python benchmarks/forward_cost.py                    # builds DIR first (weight-only fit, --fit-steps steps)

Factor quality does not change the timings, so the default build uses few fit steps. Writes
benchmarks/results/forward_cost.json and forward_cost.md (the markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._bench import ROOT, machine_info, machine_line, write_section  # noqa: E402

VARIANTS = ("dense", "sine", "cached")
TARGETS = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"
RESULTS = ROOT / "benchmarks" / "results"


def build(variant: str, compressed: Path):
    import sinecompress
    from benchmarks._minilm import minilm

    if variant == "dense":
        return minilm()[0]
    return sinecompress.load(compressed, cache_weights=variant == "cached")


def batch(batch_size: int, seq: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 30000, (batch_size, seq), generator=g),
            "attention_mask": torch.ones(batch_size, seq, dtype=torch.long)}


def weights_bytes(model) -> int:
    from sinecompress.nn.layers import SineLowRankLinear

    n = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for m in model.modules():
        if isinstance(m, SineLowRankLinear) and m._cache is not None:
            n += m._cache[1].numel() * m._cache[1].element_size()
    return n


def forward_ms(model, x) -> float:
    t0 = time.perf_counter()
    model(**x)
    return (time.perf_counter() - t0) * 1e3


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def timing(compressed: Path, x: dict, repeats: int, warmup: int) -> dict:
    from sinecompress.nn.layers import SineLowRankLinear

    models = {v: build(v, compressed) for v in VARIANTS}
    sine_layers = [m for m in models["sine"].modules() if isinstance(m, SineLowRankLinear)]
    times, builds = {v: [] for v in VARIANTS}, []
    with torch.inference_mode():
        for _ in range(warmup):
            for v in VARIANTS:
                forward_ms(models[v], x)
        for _ in range(repeats):
            for v in VARIANTS:
                times[v].append(forward_ms(models[v], x))
            t0 = time.perf_counter()
            for m in sine_layers:
                m.dense_weight(dtype=torch.float32)
            builds.append((time.perf_counter() - t0) * 1e3)
        # All three compute the same function up to the factorisation: report how close sine and cached are.
        same = torch.equal(models["sine"](**x).last_hidden_state, models["cached"](**x).last_hidden_state)
    out = {v: {"forward_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "runs": t,
               "vs_dense": statistics.median(a / b for a, b in zip(t, times["dense"])),
               "weights_bytes": weights_bytes(models[v])} for v, t in times.items()}
    out["sine"]["build_ms"] = statistics.median(builds)
    out["sine"]["sine_layers"] = len(sine_layers)
    out["sine_equals_cached"] = same
    return out


def memory_child(variant: str, compressed: Path, x: dict, repeats: int) -> dict:
    model = build(variant, compressed)
    before = rss_kib("VmRSS")
    with torch.inference_mode():
        for _ in range(repeats):
            model(**x)
    return {"peak_kib": rss_kib("VmHWM"), "before_forward_kib": before}


def memory(variant: str, compressed: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--compressed", str(compressed), "--batch", str(args.batch),
           "--seq", str(args.seq), "--repeats", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_compressed(dest: Path, steps: int) -> Path:
    from sinecompress import factorize

    factorize("example:minilm", dest, rank=32, calibration=False, steps=steps, targets=[TARGETS])
    return dest


def table(res: dict, args) -> str:
    mib = 2**20
    rows = ["| variant | forward ms (median) | min–max ms | × dense (paired median) | Ŵ build ms | weights MiB "
            "| peak RSS MiB | forward growth MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in VARIANTS:
        t, m = res["timing"][v], res["memory"][v]
        build = f"{t['build_ms']:.0f}" if "build_ms" in t else "-"
        rows.append(f"| {v} | {t['forward_ms']:.0f} | {t['min_ms']:.0f}–{t['max_ms']:.0f} | {t['vs_dense']:.2f} | {build} | "
                    f"{t['weights_bytes'] / mib:.1f} | {m['peak_kib'] / 1024:.0f} | "
                    f"{(m['peak_kib'] - m['before_forward_kib']) / 1024:.0f} |")
    return "\n".join([
        "## forward_cost",
        "",
        f"Command: `python benchmarks/forward_cost.py {' '.join(sys.argv[1:])}`. {machine_line(res['machine'])} "
        f"Load average at the start: {res.get('load', 'not recorded')}.",
        f"all-MiniLM-L6-v2, batch {args.batch} × {args.seq} tokens, inference_mode; sine/cached: the 12 MLP "
        "matrices as rank-32 SineLowRankLinear (`sinecompress.load`, cached: `cache_weights=True`). "
        f"Median of {args.repeats} forwards per variant after {args.warmup} warm-up rounds, the variants "
        "interleaved in each round, so load from other jobs hits all of them alike. "
        "Peak RSS: a separate process per variant (load + 3 forwards). "
        f"sine and cached outputs bit-identical: {res['timing']['sine_equals_cached']}.",
        "",
        *rows,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressed", type=Path, help="factorize output of MiniLM (default: build one)")
    ap.add_argument("--fit-steps", type=int, default=2, help="fit steps when building the compressed model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    x = batch(args.batch, args.seq)
    if args.child:
        print(json.dumps(memory_child(args.child, args.compressed, x, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        compressed = args.compressed or make_compressed(Path(tmp) / "minilm-sine-r32", args.fit_steps)
        res = {"machine": machine_info(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
               "timing": timing(compressed, x, args.repeats, args.warmup),
               "memory": {v: memory(v, compressed, args) for v in VARIANTS}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = table(res, args)
    for name, text in (("forward_cost.json", json.dumps(res, indent=2) + "\n"), ("forward_cost.md", md + "\n")):
        tmp = RESULTS / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / name)
    write_section("forward_cost", md)
    print(md)


if __name__ == "__main__":
    main()
