"""Fine-tune the bundled all-MiniLM-L6-v2 with LoRA vs sine LoRA at equal rank, on a real offline task.

Task: given the first paragraph of a docstring from Python's standard library, say which package it
comes from (asyncio, email, http, importlib, logging, multiprocessing, urllib, xml). The docstrings
are read from the installed standard library with ``inspect``: real English text, nothing downloaded.
Texts that occur under two packages are dropped; the split into train and held-out is by text.

Each run trains a mean-pooled MiniLM encoder plus a linear head with the same data order, rank,
learning rate and steps; only the adapter kind differs. A "head only" row (frozen encoder) shows
what the adapters add.

    HF_HUB_OFFLINE=1 python examples/finetune_minilm.py --quick        # a few CPU minutes
    python examples/finetune_minilm.py --json                           # longer run, JSON on stdout

Writes the `finetune_minilm` section of BENCHMARKS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import random
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sinecompress.adapters import AdapterConfig, inject_adapters, trainable_parameters  # noqa: E402
from sinecompress.io.examples import example_dir  # noqa: E402

PACKAGES = ["asyncio", "email", "http", "importlib", "logging", "multiprocessing", "urllib", "xml"]
TARGETS = [r"encoder\.layer\.\d+\.attention\.self\.(query|key|value)",
           r"encoder\.layer\.\d+\.(intermediate|output)\.dense"]


def stdlib_docstrings(pkg: str) -> set[str]:
    """First paragraphs of the public functions', classes' and methods' docstrings defined in ``pkg``."""
    out: set[str] = set()
    root = importlib.import_module(pkg)
    modules = [root]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), pkg + "."):
            if "test" in info.name or "__main__" in info.name:
                continue
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:  # optional platform modules (e.g. Windows-only) are simply skipped
                continue
    for mod in modules:
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_"):
                continue
            objs = [obj] + ([v for k, v in sorted(vars(obj).items()) if not k.startswith("_")]
                            if inspect.isclass(obj) else [])
            for o in objs:
                owner = getattr(o, "__module__", None) or ""
                if not (owner == pkg or owner.startswith(pkg + ".")):
                    continue
                if not (inspect.isfunction(o) or inspect.isclass(o) or inspect.ismethod(o)):
                    continue
                doc = inspect.getdoc(o)
                if doc:
                    para = " ".join(doc.strip().split("\n\n")[0].split())
                    if len(para) >= 25:
                        out.add(para[:400])
    return out


def build_dataset(per_class: int, seed: int = 0):
    by_pkg = {p: stdlib_docstrings(p) for p in PACKAGES}
    seen: dict[str, set[str]] = {}
    for p, texts in by_pkg.items():
        for t in texts:
            seen.setdefault(t, set()).add(p)
    rng = random.Random(seed)
    train, test = [], []
    for label, p in enumerate(PACKAGES):
        texts = sorted(t for t in by_pkg[p] if len(seen[t]) == 1)
        rng.shuffle(texts)
        texts = texts[:per_class]
        cut = int(len(texts) * 0.75)
        train += [(t, label) for t in texts[:cut]]
        test += [(t, label) for t in texts[cut:]]
    rng.shuffle(train)
    return train, test


class Classifier(nn.Module):
    def __init__(self, encoder, n_classes):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, ids, mask):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def run(kind: str | None, train, test, tok, args) -> dict:
    from transformers import AutoModel

    torch.manual_seed(args.seed)
    encoder = AutoModel.from_pretrained(str(example_dir("minilm")))
    model = Classifier(encoder, len(PACKAGES))
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    if kind is not None:
        cfg = AdapterConfig(kind=kind, r=args.rank, alpha=2 * args.rank, omega=args.omega)
        inject_adapters(model.encoder, cfg, TARGETS)
    for p in model.head.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)  # same batches for every kind
    losses, t0 = [], time.perf_counter()
    model.train()
    for _ in range(args.steps):
        batch = rng.sample(train, args.batch)
        enc = tok([t for t, _ in batch], padding=True, truncation=True, max_length=args.max_len, return_tensors="pt")
        y = torch.tensor([lbl for _, lbl in batch])
        loss = nn.functional.cross_entropy(model(enc["input_ids"], enc["attention_mask"].float()), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 64):
            chunk = test[i:i + 64]
            enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=args.max_len,
                      return_tensors="pt")
            pred = model(enc["input_ids"], enc["attention_mask"].float()).argmax(-1)
            correct += int((pred == torch.tensor([lbl for _, lbl in chunk])).sum())
    w = max(1, args.steps // 10)
    curve = [sum(losses[i:i + w]) / len(losses[i:i + w]) for i in range(0, len(losses), w)]
    return {"kind": kind or "head_only", "trainable": trainable_parameters(model),
            "adapter_params": trainable_parameters(model) - sum(p.numel() for p in model.head.parameters()),
            "loss_curve": curve, "loss_first": curve[0], "loss_last": curve[-1],
            "heldout_acc": correct / len(test), "train_s": train_s}


def render(res: dict) -> str:
    a = res["args"]
    lines = [f"Fine-tuning all-MiniLM-L6-v2 (bundled) to name the standard-library package of a docstring "
             f"({len(PACKAGES)} classes: {', '.join(PACKAGES)}; {res['n_train']} train / {res['n_test']} held-out "
             f"texts from this machine's Python {res['python']}). Adapters on query, key, value and both MLP "
             f"matrices of all 6 layers, r={a['rank']}, α=2r, ω={a['omega']:g} (sine), AdamW lr {a['lr']:g}, "
             f"{a['steps']} steps of batch {a['batch']}, max {a['max_len']} tokens, seed {a['seed']}"
             f"{', --quick' if a['quick'] else ''}. Chance is {1 / len(PACKAGES):.1%}.",
             "", f"Machine: {res['machine']}", "",
             "| method | adapter params | train loss (first → last tenth) | held-out accuracy | train time |",
             "|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['kind']} | {r['adapter_params']:,} | {r['loss_first']:.3f} → {r['loss_last']:.3f} | "
                     f"{r['heldout_acc']:.1%} | {r['train_s']:.0f} s |")
    lines += ["", "Loss curves (mean of each tenth of training):", ""]
    for r in res["runs"]:
        lines.append(f"- {r['kind']}: " + " ".join(f"{v:.2f}" for v in r["loss_curve"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and shorter texts (a few CPU minutes)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--rank", type=int, default=4, help="adapter rank r for both kinds")
    ap.add_argument("--omega", type=float, default=200.0, help="sine frequency (the paper's RoBERTa setting)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=None)
    ap.add_argument("--per-class", type=int, default=150, help="texts per package before the split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="*", default=["head_only", "lora", "sine_lora"],
                    help="head_only, lora, sine_lora, dora, sine_dora")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    args.steps = args.steps or (60 if args.quick else 400)
    args.max_len = args.max_len or (40 if args.quick else 96)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from transformers import AutoTokenizer

    from benchmarks._bench import machine_info, machine_line, write_section

    train, test = build_dataset(args.per_class, args.seed)
    tok = AutoTokenizer.from_pretrained(str(example_dir("minilm")))
    runs = []
    for kind in args.kinds:
        r = run(None if kind == "head_only" else kind, train, test, tok, args)
        print(f"{r['kind']:10s} loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}  held-out acc "
              f"{r['heldout_acc']:.1%}  ({r['train_s']:.0f} s)", file=sys.stderr)
        runs.append(r)
    import platform

    res = {"args": {**vars(args)}, "n_train": len(train), "n_test": len(test), "runs": runs,
           "python": platform.python_version(), "machine": machine_line(machine_info())}
    if args.json:
        print(json.dumps(res, indent=2))
    if not args.no_write:
        write_section("finetune_minilm", render(res))


if __name__ == "__main__":
    main()
