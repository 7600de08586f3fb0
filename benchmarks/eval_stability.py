"""How stable and how fast is `eval`'s perplexity: the same model on consecutive, disjoint chunks of the
held-out token stream, for several window/stride settings. One JSON line per (setting, chunk) on stdout.

    PYTHONPATH=. python benchmarks/eval_stability.py MODEL --chunk 2048 --chunks 4 --settings 256:128 512:256
    PYTHONPATH=. python benchmarks/eval_stability.py MODEL --against ORIG --chunk 2048 --chunks 4

MODEL (and ORIG) are anything `sinecompress eval` accepts (a model directory, or a .gguf file). Chunk i is
tokens [i*chunk, (i+1)*chunk) of the stream that `eval` builds (evaluate.token_stream); chunk 0 is exactly
what `eval --max-tokens CHUNK` measures. With --against, each row also has ORIG's perplexity on the same
tokens and the ratio, the number a compressed model is judged by.

For an encoder (--against required) chunk i is the i-th run of consecutive texts whose token counts (ORIG's
tokenizer) fit in CHUNK tokens, and each row is the embedding agreement on it (what `eval --max-tokens
CHUNK` measures for chunk 0).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from sinecompress.report.evaluate import (
    _embeddings,
    _texts_within,
    agreement,
    eval_texts,
    perplexity,
    token_stream,
)
from sinecompress.report.models import ENCODER, load_for_eval


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--against", default=None)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=["512:256"], help="WINDOW:STRIDE pairs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    loaded = load_for_eval(args.model)
    ref = load_for_eval(args.against) if args.against else None
    load_s = time.perf_counter() - t0
    texts, _ = eval_texts(None)
    if loaded.kind == ENCODER:
        return encoder_chunks(loaded, ref, texts, args)
    ids = token_stream(loaded.tokenizer, texts, None)
    print(json.dumps({"model": args.model, "load_seconds": round(load_s, 1), "stream_tokens": ids.numel(),
                      "threads": torch.get_num_threads()}), flush=True)
    for setting in args.settings:
        window, stride = map(int, setting.split(":"))
        for i in range(args.chunks):
            chunk = ids[i * args.chunk:(i + 1) * args.chunk]
            t0 = time.perf_counter()
            cpu0 = os.times()
            r = perplexity(loaded.model, chunk, window, stride)
            if ref is not None:
                r["against_perplexity"] = perplexity(ref.model, chunk, window, stride)["perplexity"]
                r["ratio"] = r["perplexity"] / r["against_perplexity"]
            cpu1 = os.times()
            print(json.dumps({"window": window, "stride": stride, "chunk": i, **r,
                              "seconds": round(time.perf_counter() - t0, 1),
                              "cpu_seconds": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 1),
                              "loadavg": os.getloadavg()[0]}), flush=True)


def encoder_chunks(loaded, ref, texts, args):
    window = min(512, ref.model.config.max_position_embeddings)
    rest = texts
    for i in range(args.chunks):
        chunk, tokens = _texts_within(ref.tokenizer, rest, args.chunk, window)
        rest = rest[len(chunk):]
        t0 = time.perf_counter()
        cpu0 = os.times()
        q = agreement(_embeddings(ref, chunk, window, None), _embeddings(loaded, chunk, window, None))
        cpu1 = os.times()
        print(json.dumps({"chunk": i, **q, "texts": len(chunk), "tokens": tokens,
                          "seconds": round(time.perf_counter() - t0, 1),
                          "cpu_seconds": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 1),
                          "loadavg": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
