"""Peak memory of block-by-block calibrated compression, against the bound the design promises:
the import footprint + 2 × one block in float32 + the calibration activations + 300 MiB, whatever the
number of blocks.

A Llama-shaped checkpoint with random weights (bfloat16 on disk, written one tensor at a time) is
compressed with calibration (`sinecompress factorize DIR --method wsvd ...`, timed with /usr/bin/time).
Shapes: "1b" = TinyLlama-1.1B's (hidden 2048, MLP 5632, 32 heads, 4 KV heads), "7b" = Llama-2-7B's
(hidden 4096, MLP 11008, 32 heads); --blocks sets the depth.

    PYTHONPATH=. python benchmarks/llm_memory.py --shape 1b --blocks 11 22      # writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/llm_memory.py --shape 7b --blocks 32 --fit-steps 5
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

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, publish  # noqa: E402

from sinecompress.io.examples import example_dir  # noqa: E402
from sinecompress.io.shards import write_weights  # noqa: E402
from sinecompress.io.writer import Entry  # noqa: E402

SHAPES = {"1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4},
          "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32}}
VOCAB = 32000
MIB = 2**20


def llama_dir(root: Path, shape: str, blocks: int, seed: int = 0) -> tuple[Path, int]:
    """A Llama directory with random bf16 weights (streamed: one tensor in memory) and MiniLM's tokenizer
    (its ids fit the vocabulary). Returns (directory, parameters of one block)."""
    from transformers import LlamaConfig

    s = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=VOCAB, num_hidden_layers=blocks, max_position_embeddings=2048,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"], **s)
    d = root / f"llama-{shape}-{blocks}"
    d.mkdir(parents=True)
    cfg.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(example_dir("minilm") / f, d / f)
    h, m = s["hidden_size"], s["intermediate_size"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    per_block = {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h),
                 "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, h),
                 "mlp.gate_proj.weight": (m, h), "mlp.up_proj.weight": (m, h), "mlp.down_proj.weight": (h, m),
                 "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    shapes = {"model.embed_tokens.weight": (VOCAB, h)}
    for i in range(blocks):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_block.items()})
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (VOCAB, h)})
    gen = torch.Generator().manual_seed(seed)

    def produce(shape):
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=gen) / shape[1] ** 0.5).to(torch.bfloat16)

    entries = [Entry(k, "BF16", v, lambda v=v: produce(v)) for k, v in shapes.items()]
    write_weights(d, entries, {"format": "pt"}, max_bytes=2 * 10**9)
    block_params = sum(torch.Size(v).numel() for v in per_block.values())
    return d, block_params


def timed(args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".time") as tf:
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", tf.name, sys.executable, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        wall, rss = Path(tf.name).read_text().split()[-2:]
    return {"seconds": float(wall), "peak_rss_mib": int(rss) / 1024, "stdout": r.stdout}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="1b")
    ap.add_argument("--blocks", type=int, nargs="+", default=[11, 22])
    ap.add_argument("--method", default="wsvd")
    ap.add_argument("--finetune", default="none", help="factorize --finetune")
    ap.add_argument("--fit-steps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--work", type=Path, default=None, help="where to write the checkpoints (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", default=None, help="BENCHMARKS.md section (default: llm_memory_SHAPE)")
    args = ap.parse_args()
    info = {**machine_info(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    work = Path(tempfile.mkdtemp(prefix="llm_memory-", dir=args.work))
    base = timed(["-c", "import sinecompress, transformers.models.llama.modeling_llama, torch"])["peak_rss_mib"]
    rows = []
    try:
        for blocks in args.blocks:
            t0 = time.time()
            d, block_params = llama_dir(work, args.shape, blocks)
            written = time.time() - t0
            disk = sum(f.stat().st_size for f in d.glob("*.safetensors"))
            out = work / f"out-{blocks}"
            r = timed(["-m", "sinecompress", "factorize", str(d), "--method", args.method, "--param-ratio", "0.8",
                       "--finetune", args.finetune, "--fit-steps", str(args.fit_steps), "--calib-samples",
                       str(args.samples), "--seq-len", str(args.seq_len), "--out", str(out), "--json"])
            summary = json.loads(r["stdout"])
            h = SHAPES[args.shape]["hidden_size"]
            tokens = summary["calibration"]["samples"] * args.seq_len
            acts = 3 * tokens * h * 4 / MIB  # block inputs, the original block's outputs, the next inputs
            bound = base + 2 * block_params * 4 / MIB + acts + 300
            per_block = [(b["rss_mib"], b["peak_rss_mib"]) for b in summary["finetune"]["blocks"]]
            rows.append({"blocks": blocks, "disk_gib": disk / 2**30, "write_s": written, **r, "bound_mib": bound,
                         "import_mib": base, "block_fp32_mib": block_params * 4 / MIB, "acts_mib": acts,
                         "params": summary["model_params_before"], "per_block": per_block,
                         "fit_peak_mib": summary["finetune"]["peak_rss_mib"]})
            row = {k: v for k, v in rows[-1].items() if k != "stdout"}
            print(json.dumps(row), flush=True)
            shutil.rmtree(d)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = args.section or f"llm_memory_{args.shape}"
    lines = [f"## {section}", "",
             f"Random-weight Llama of {args.shape} shape (bf16 on disk), `sinecompress factorize DIR --method "
             f"{args.method} --param-ratio 0.8 --finetune {args.finetune} --fit-steps {args.fit_steps} "
             f"--calib-samples {args.samples} --seq-len {args.seq_len}`; peak RSS of that process against the "
             "bound import + 2 × one block in float32 + calibration activations (3 copies) + 300 MiB.", "",
             f"{machine_line(info)} Load average at the start: {info['load']}.", "",
             "| blocks | parameters | on disk | time | peak RSS | bound | import | one block fp32 | activations |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['blocks']} | {r['params'] / 1e9:.2f} B | {r['disk_gib']:.1f} GiB | "
                     f"{r['seconds'] / 60:.1f} min | {r['peak_rss_mib']:,.0f} MiB | {r['bound_mib']:,.0f} MiB | "
                     f"{r['import_mib']:,.0f} MiB | {r['block_fp32_mib']:,.0f} MiB | {r['acts_mib']:,.0f} MiB |")
    for r in rows:  # where the peak is reached: a block, the fits outside the stack, or writing
        lines += ["", f"{r['blocks']} blocks, resident set after each block is dropped / peak so far (MiB): "
                  + "; ".join(f"{rss:,} / {peak:,}" for rss, peak in r["per_block"])
                  + f". Peak at the end of fitting (the head included): {r['fit_peak_mib']:,} MiB."]
    lines += ["", f"Command: `PYTHONPATH=. python benchmarks/llm_memory.py --shape {args.shape} --blocks "
              f"{' '.join(map(str, args.blocks))}" + (f" --section {section}" if args.section else "") + "`."]
    publish(section, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
