"""Peak memory of `sinecompress factorize` on a generated multi-GB sharded checkpoint.

Streaming promise: weight-only methods (svd, and sine without calibration) hold a few tensors at a
time, so peak memory is the import footprint plus a small multiple of the largest tensor, whatever
the checkpoint's size. Memory is peak RssAnon sampled from /proc/PID/status every 20 ms: mmap-ed
file pages are reclaimable page cache and are not counted.

    python benchmarks/streaming_rss.py            # ~3.5 GB checkpoint (and a half-size one)
    python benchmarks/streaming_rss.py --quick    # ~0.4 GB, a minute or two
    python benchmarks/streaming_rss.py --json     # machine-readable results on stdout
    python benchmarks/streaming_rss.py --json --no-write > r.json; python benchmarks/streaming_rss.py --render r.json
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine_info, machine_line, write_section  # noqa: E402

from sinecompress.config import parse_size  # noqa: E402
from sinecompress.io.shards import write_weights  # noqa: E402
from sinecompress.io.writer import Entry  # noqa: E402

MiB = 2**20
SVD = ("svd", ["--method", "svd", "--rank", "16"])
SINE = ("sine (2 steps)", ["--method", "sine", "--rank", "16", "--fit-steps", "2"])  # 2 steps of each layer's fit
ROOT = Path(__file__).resolve().parents[1]
FOOTPRINT = ("import time, torch, sinecompress.cli, sinecompress.pipeline.factorize\n"
             "torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the sine fit imports the optimiser stack\n"
             "time.sleep(1.0)\n")


def make_checkpoint(d: Path, layers: int, shape: tuple[int, int], shard: str) -> dict:
    """A sharded checkpoint of random 2-D weights (F32 and F16 alternating) and F32 biases, streamed to disk."""
    d.mkdir(parents=True)
    entries = []
    for i in range(layers):
        dtype, st = (torch.float32, "F32") if i % 2 == 0 else (torch.float16, "F16")
        entries.append(Entry(f"layers.{i}.proj.weight", st, shape,
                             lambda i=i, dtype=dtype: torch.randn(*shape, generator=torch.Generator().manual_seed(i)
                                                                  ).div_(shape[1] ** 0.5).to(dtype)))
        entries.append(Entry(f"layers.{i}.proj.bias", "F32", (shape[0],), lambda: torch.zeros(shape[0])))
    names = write_weights(d, entries, {"format": "pt"}, max_bytes=parse_size(shard))
    total = sum(e.nbytes for e in entries)
    largest = max(e.nbytes for e in entries)
    return {"path": str(d), "bytes": total, "largest_tensor_bytes": largest, "shards": len(names) if len(names) > 1 else 1,
            "tensors": len(entries)}


def rss_anon_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def sampled(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; sample its RssAnon every 20 ms; return peak, wall time and exit code."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        v = rss_anon_kib(proc.pid)
        if v:
            peak = max(peak, v)
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return {"peak_rss_anon_bytes": peak * 1024, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~0.4 GB checkpoint instead of ~3.5 GB")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one, removed after)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the BENCHMARKS.md section from a saved --json output")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        write_section("streaming_rss", to_markdown(results))
        return results

    shape = (2048, 4096) if args.quick else (4096, 8192)  # largest tensor: 32 MiB or 128 MiB (F32)
    layers = 8 if args.quick else 36
    shard = "200MB" if args.quick else "1GB"
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="sc-rss-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    py = [sys.executable]
    results = {"machine": machine_info(), "quick": args.quick, "runs": []}
    try:
        results["import_footprint"] = sampled(py + ["-c", FOOTPRINT], env)
        sizes = [layers] if args.quick else [layers // 2, layers]
        for n in sizes:
            ck = make_checkpoint(scratch / f"ckpt{n}", n, shape, shard)
            runs = [SVD, SINE] if n == sizes[-1] else [SVD]
            for label, flags in runs:
                out = scratch / f"out{n}-{label.split()[0]}"
                cmd = py + ["-m", "sinecompress", "factorize", ck["path"], *flags, "--out", str(out),
                            "--max-shard-size", shard]
                r = sampled(cmd, env)
                r.update(method=label, checkpoint_bytes=ck["bytes"], largest_tensor_bytes=ck["largest_tensor_bytes"],
                         shards_in=ck["shards"], tensors=ck["tensors"])
                results["runs"].append(r)
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(ck["path"], ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    base = results["import_footprint"]["peak_rss_anon_bytes"]
    for r in results["runs"]:
        r["over_import_bytes"] = r["peak_rss_anon_bytes"] - base
        r["multiple_of_largest_tensor"] = round(r["over_import_bytes"] / r["largest_tensor_bytes"], 2)
        r["fraction_of_checkpoint"] = round(r["peak_rss_anon_bytes"] / r["checkpoint_bytes"], 3)
    if not args.no_write:
        write_section("streaming_rss", to_markdown(results))
    if args.json:
        print(json.dumps(results, indent=2))
    return results


def to_markdown(res: dict) -> str:
    base = res["import_footprint"]["peak_rss_anon_bytes"]
    lines = [
        "## Streaming: peak memory of `factorize` on a sharded checkpoint",
        "",
        "Peak anonymous memory (RssAnon from /proc, sampled every 20 ms; mmap-ed file pages are page cache "
        "and not counted) of one `sinecompress factorize` process, compressing every 2-D weight of a generated "
        "checkpoint of random F32/F16 matrices, writing sharded output. The import footprint is a process "
        "that imports torch, sinecompress and the optimiser stack and does nothing else.",
        "",
        f"{machine_line(res['machine'])} Command: `python benchmarks/streaming_rss.py"
        f"{' --quick' if res['quick'] else ''}`.",
        "",
        f"Flags: svd `{' '.join(SVD[1])}`; sine `{' '.join(SINE[1])}` (no calibration); output "
        f"`--max-shard-size {'200MB' if res['quick'] else '1GB'}`. Times are wall-clock on a shared machine "
        "(other jobs were running) and are not a speed benchmark.",
        "",
        f"Import footprint: **{base / MiB:,.0f} MiB**.",
        "",
        "| method | checkpoint | tensors | largest tensor | peak RssAnon | above import | × largest tensor | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["runs"]:
        lines.append(f"| {r['method']} | {r['checkpoint_bytes'] / 2**30:.2f} GiB | {r['tensors']} | "
                     f"{r['largest_tensor_bytes'] / MiB:.0f} MiB | {r['peak_rss_anon_bytes'] / MiB:,.0f} MiB | "
                     f"{r['over_import_bytes'] / MiB:,.0f} MiB | {r['multiple_of_largest_tensor']:.1f} | "
                     f"{r['seconds']:.0f} s |")
    lines += ["", "Peak memory follows the largest tensor, not the checkpoint: each fitted layer is written to the "
              "run's work directory as soon as it is done, and the output is streamed from there one tensor at a "
              "time. The sine fit needs several m×n float32 work buffers (phase, sine, residual, gradients), "
              "hence its larger multiple."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
