"""Training cost of LoRA, sine LoRA, DoRA and sine DoRA adapters at equal rank, on one Llama-style model.

For each variant, one training step (forward, backward, AdamW) on the same model and batch:
  saved_bytes  bytes kept for backward, summed over unique storages seen by
               torch.autograd.graph.saved_tensors_hooks, parameters excluded (they exist anyway)
  step_s       median wall time per step
  peak_bytes   (CUDA) peak allocated memory during a step
Variants: lora (two thin matmuls), sine_lora (lean autograd, default settings: one fused matmul
with W0+ΔW only in fp32), sine_lora_fused (forces one matmul with W0+ΔW also in bf16), sine_lora_naive (official-code style:
autograd through the dense sin(ω·BA), which keeps it for backward), dora (peft's formulation),
dora_lean, sine_dora (lean), sine_dora_naive (peft's DoRA with the dense sine).

    python benchmarks/lora_cost.py --quick            # CPU: small Llama-style model, fp32
    python benchmarks/lora_cost.py --json --out r.json  # CUDA: ≥1B-parameter Llama-style model, bf16
    python benchmarks/lora_cost.py --render benchmarks/results/lora_cost_*.json   # BENCHMARKS.md only

Each run stores its JSON in benchmarks/results/lora_cost_<device>.json and rewrites the `lora_cost`
section of BENCHMARKS.md from all stored results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._bench import ROOT, machine_info, machine_line, write_section  # noqa: E402
from sinecompress.adapters import AdapterConfig, inject_adapters, remove_adapters  # noqa: E402

TARGETS = [r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", r"model\.layers\.\d+\.mlp\.(up|down)_proj"]
VARIANTS = {
    "lora": {"kind": "lora"},
    "sine_lora": {"kind": "sine_lora"},
    "sine_lora_fused": {"kind": "sine_lora", "fuse": True},
    "sine_lora_naive": {"kind": "sine_lora", "lean": False},
    "dora": {"kind": "dora", "lean": False},
    "dora_lean": {"kind": "dora"},
    "sine_dora": {"kind": "sine_dora"},
    "sine_dora_naive": {"kind": "sine_dora", "lean": False},
}
RESULTS = ROOT / "benchmarks" / "results"


def build_model(device: str, quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    if device == "cuda":  # ≈1.1B parameters
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)
        dtype, batch, seq = torch.bfloat16, 4, 1024
        if quick:
            cfg.num_hidden_layers, batch, seq = 4, 2, 512
    else:
        cfg = LlamaConfig(vocab_size=4000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)
        dtype, batch, seq = torch.float32, 4, 128
        if not quick:
            cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, seq = 512, 1536, 6, 256
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model, cfg, batch, seq


def measure(model, ids, device, steps) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step(hooks=None):
        opt.zero_grad(set_to_none=True)
        with autocast:
            if hooks is None:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                with torch.autograd.graph.saved_tensors_hooks(*hooks):
                    loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        return loss

    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs and t.device.type != "meta":
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    for _ in range(2):
        step()  # warm-up (allocator, kernels, optimizer state)
    step((pack, lambda t: t))
    saved = sum(seen.values())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    peak = None
    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    out = {"saved_bytes": saved, "step_s": statistics.median(times), "loss": float(loss.detach()),
           "trainable_params": sum(p.numel() for p in params)}
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out["peak_bytes"] = peak
        out["peak_above_start_bytes"] = peak - base
    return out


def run(device: str, quick: bool, rank: int, omega: float, steps: int, only: list[str] | None,
        rounds: int) -> dict:
    model, cfg, batch, seq = build_model(device, quick)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g).to(device)
    result = {"device": device, "machine": machine_info(), "quick": quick, "rank": rank, "omega": omega,
              "model": {"params": n_params, "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
                        "layers": cfg.num_hidden_layers, "dtype": str(next(model.parameters()).dtype),
                        "batch": batch, "seq": seq},
              "targets": TARGETS, "steps": steps, "rounds": rounds}
    # Variants run in turn, `rounds` times over: a slow spell of the machine then hits every variant,
    # and each variant's step time is its best round's median.
    for _ in range(rounds):
        for name, kw in VARIANTS.items():
            if only and name not in only:
                continue
            inject_adapters(model, AdapterConfig(r=rank, omega=omega, **kw), TARGETS)
            m = measure(model, ids, device, steps)
            remove_adapters(model, merge=False)
            if device == "cuda":
                torch.cuda.empty_cache()
            m["step_s_rounds"] = result.get(name, {}).get("step_s_rounds", []) + [m["step_s"]]
            m["step_s"] = min(m["step_s_rounds"])
            result[name] = m
    for name in VARIANTS:
        if name not in result:
            continue
        print(f"{name:16s} saved {result[name]['saved_bytes'] / 2**20:9.1f} MiB  step {result[name]['step_s']:.4f} s"
              + (f"  peak {result[name]['peak_bytes'] / 2**30:.2f} GiB" if device == "cuda" else ""),
              file=sys.stderr)
    return result


def render(results: list[dict]) -> str:
    lines = ["Training cost per step at equal rank, adapters on q, k, v, up, down (the paper's Llama setting). "
             "`saved` = bytes kept for backward (unique storages, parameters excluded); ratios are against "
             "plain LoRA on the same model and batch. Paper (official code, Llama-3-8B, H100): sine LoRA "
             "1.31× LoRA's memory (72.0 vs 54.9 GB) and 1.17× its time (7 h vs 6 h).", ""]
    for r in results:
        m = r["model"]
        lines += [f"**{r['device'].upper()}** — {machine_line(r['machine'])}", "",
                  f"Llama-style model from a config: {m['params'] / 1e6:.0f}M parameters ({m['layers']} layers, "
                  f"hidden {m['hidden']}, MLP {m['intermediate']}), {m['dtype'].replace('torch.', '')}"
                  + (" weights, bf16 autocast, fp32 adapters" if r["device"] == "cuda" else "")
                  + f", batch {m['batch']}×{m['seq']} tokens, r={r['rank']}, ω={r['omega']:g}, "
                  f"step time: best of {r.get('rounds', 1)} rounds of the median of {r['steps']} steps"
                  f"{' (--quick)' if r['quick'] else ''}.", ""]
        cuda = r["device"] == "cuda"
        head = "| variant | trainable | saved MiB | × LoRA | step ms | × LoRA |" + (" peak GiB | × LoRA |" if cuda else "")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        base = r["lora"]
        for name in VARIANTS:
            if name not in r:
                continue
            v = r[name]
            row = (f"| {name} | {v['trainable_params'] / 1e6:.2f}M | {v['saved_bytes'] / 2**20:.1f} | "
                   f"{v['saved_bytes'] / base['saved_bytes']:.3f} | {v['step_s'] * 1e3:.1f} | "
                   f"{v['step_s'] / base['step_s']:.2f} |")
            if cuda:
                row += f" {v['peak_bytes'] / 2**30:.2f} | {v['peak_bytes'] / base['peak_bytes']:.3f} |"
            lines.append(row)
        lines.append("")
        if "sine_lora" in r:
            v = r["sine_lora"]
            mem = max(v["saved_bytes"] / base["saved_bytes"],
                      v["peak_bytes"] / base["peak_bytes"] if cuda else 0.0)
            t = v["step_s"] / base["step_s"]
            lines += [f"Targets (sine_lora vs lora): memory {mem:.3f}× (≤ 1.05: {'met' if mem <= 1.05 else 'NOT met'}), "
                      f"time {t:.2f}× (≤ 1.15: {'met' if t <= 1.15 else 'NOT met'}).", ""]
        if r.get("note"):
            lines += [f"Note: {r['note']}.", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller model/batch (CPU: a few seconds per variant)")
    ap.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    ap.add_argument("--out", type=Path, help="also write the result JSON here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rank", type=int, default=8, help="adapter rank r (default 8)")
    ap.add_argument("--omega", type=float, default=600.0, help="sine frequency ω (paper: 600 at r=8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all variants; best median counts")
    ap.add_argument("--only", nargs="*", help="run only these variants (lora is always run)")
    ap.add_argument("--no-write", action="store_true", help="do not touch benchmarks/results or BENCHMARKS.md")
    ap.add_argument("--render", nargs="*", type=Path, help="only rebuild the BENCHMARKS.md section from JSON files")
    args = ap.parse_args(argv)
    if args.render is not None:
        files = args.render or sorted(RESULTS.glob("lora_cost_*.json"))
        write_section("lora_cost", render([json.loads(p.read_text()) for p in files]))
        return
    steps = args.steps or (3 if args.quick else 15)
    only = None if not args.only else ["lora", *args.only]
    result = run(args.device, args.quick, args.rank, args.omega, steps, only, args.rounds)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"lora_cost_{args.device}.json").write_text(text + "\n")
        write_section("lora_cost", render([json.loads(p.read_text()) for p in sorted(RESULTS.glob("lora_cost_*.json"))]))


if __name__ == "__main__":
    main()
