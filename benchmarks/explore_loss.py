"""Which distillation loss tunes all-MiniLM-L6-v2's sine MLP factors best, as the held-out sentence
embeddings judge them. The layers are fitted once (the CLI's sine defaults); each variant then tunes a copy
with the same steps, rate, seed and calibration batches, changing only the loss:

* every     the tool's loss: the mean over every block's output of the relative error (tokens by energy)
* last      the last block's output only (what the pooled embedding is made from)
* last×3    every block's output, the last one counted three times
* pooled    the tool's loss plus 1 − cosine of the mean-pooled last hidden state, per text

    PYTHONPATH=. python benchmarks/explore_loss.py --k 32 --section explore_loss
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import load_average, provenance, write_section  # noqa: E402
from _minilm import embed, experiment, quality  # noqa: E402
from minilm_quality import sine_student  # noqa: E402

import sinecompress.pipeline.distill as D  # noqa: E402
from sinecompress.config import WHOLE_MODEL_TEXTS  # noqa: E402

TOOL_LOSS = D.distill_loss


def weighted(last_weight: float, others: float = 1.0):
    def loss(student_h, teacher_h, mask, per_token=True):
        w = [others] * (len(student_h) - 1) + [last_weight]
        total = sum(wi * D.relative_error(s, t, mask, per_token) for wi, s, t in zip(w, student_h, teacher_h) if wi)
        return total / sum(w)
    return loss


def pooled(student_h, teacher_h, mask, per_token=True):
    m = torch.ones(student_h[-1].shape[:2]) if mask is None else mask.to(student_h[-1].dtype)
    m = m.unsqueeze(-1)

    def pool(h):
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    cos = torch.nn.functional.cosine_similarity(pool(student_h[-1].float()), pool(teacher_h[-1].float()), dim=-1)
    return TOOL_LOSS(student_h, teacher_h, mask, per_token) + (1 - cos).mean()


VARIANTS = {"every": TOOL_LOSS, "last": weighted(1.0, 0.0), "last×3": weighted(3.0), "pooled": pooled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[32])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--calib", type=int, default=WHOLE_MODEL_TEXTS)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--section", default="explore_loss")
    args = ap.parse_args()
    load = load_average()
    e = experiment(args.calib, args.heldout)
    texts = sum(b["input_ids"].shape[0] for b in e.calib)
    rows = []
    for k in args.k:
        fitted = sine_student(e, k, args.fit_steps)
        for variant in args.variants:
            student = copy.deepcopy(fitted)
            D.distill_loss = VARIANTS[variant]
            t0 = time.perf_counter()
            r = D.distill(student, e.model, e.calib, e.names, steps=args.ft_steps, lr=args.lr)
            D.distill_loss = TOOL_LOSS
            q = quality(e.ref, embed(student, e.held))
            rows.append({"k": k, "variant": variant, **{m: round(v, 4) for m, v in q.items()},
                         "undone": r["undone"], "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    lines = [f"## {args.section}", "",
             f"{provenance(load)} Calibration {texts} texts, "
             f"held-out {args.heldout}, fit steps {args.fit_steps} (once per k), fine-tune steps {args.ft_steps} "
             f"at rate {args.lr:g}.", "",
             "| k | loss | cosine | NN agreement | undone | tune seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['variant']} | {r['cosine']:.3f} | {r['nn_agreement']:.3f} | {r['undone']} | "
              f"{r['seconds']} |" for r in rows]
    md = "\n".join(lines)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
