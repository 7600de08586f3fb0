"""The write and report stages: stream the compressed checkpoint, then summarise what was done."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from ..dtypes import TO_TORCH
from ..io.atomic import atomic_output
from ..io.format import PLACEHOLDER, hf_quantization_config, make_metadata
from ..io.model_dir import copy_model_files
from ..io.shards import write_weights
from ..io.sources import Source
from ..io.writer import Entry, write_safetensors
from ..progress import QUIET, Progress
from .distributed import Dist
from .plan import Plan


def entries_for(src: Source, plan: Plan, factors: dict[str, dict]) -> list[Entry]:
    """Output tensors in source order: each factorised weight replaced in place by its factors."""
    by_weight = {lp.name + ".weight": lp for lp in plan.compressed}
    # A calibration fine-tune also tunes the biases of the compressed layers.
    tuned = {lp.name + ".bias": factors[lp.name]["bias"] for lp in plan.compressed
             if factors[lp.name].get("bias") is not None}
    entries = []
    for name, info in src.tensors.items():
        lp = by_weight.get(name)
        if name in tuned:
            entries.append(Entry(name, info.dtype, info.shape, lambda t=tuned[name]: t))
            continue
        if lp is None:
            entries.append(Entry(name, info.dtype, info.shape, lambda n=name: src.get(n)))
            continue
        f = factors[lp.name]
        rec = lp.record()
        entries.append(Entry(f"{lp.name}.{PLACEHOLDER}", info.dtype, (0,),
                             lambda d=TO_TORCH[info.dtype]: torch.empty(0, dtype=d)))
        for key, fname in rec.tensor_names.items():
            # Shapes come from the plan, tensors only when written: one factor in memory at a time.
            entries.append(Entry(fname, info.dtype, rec.shapes[key], lambda f=f, key=key: f[key]))
    return entries


def write_compressed(src: Source, plan: Plan, factors: dict[str, dict], out: Path, overwrite: bool,
                     max_shard_bytes: int | None = None, dist: Dist | None = None,
                     extra: dict | None = None, progress: Progress = QUIET, card: str | None = None) -> None:
    """Stream the output under a temporary name and rename it into place once complete.

    A file source gives a file; a directory source (or ``max_shard_bytes``) gives a directory with
    the side files and the weights, sharded when they exceed ``max_shard_bytes``. With several
    ranks, each writes every ``world``-th shard and rank 0 the index, config and final rename.
    """
    dist = dist or Dist()
    layers = {lp.name: lp.record(rel_error=factors[lp.name]["rel_error"], act_error=factors[lp.name].get("act_error"))
              for lp in plan.compressed}
    meta = make_metadata(layers, plan.to_dict(), plan.source, extra)
    entries = entries_for(src, plan, factors)
    progress.stage("writing", len(entries))
    written = iter(range(1, len(entries) + 1))

    def tick(e: Entry) -> None:
        progress.advance(next(written), e.name)

    side = src.side_dir()
    as_dir = side is not None or max_shard_bytes is not None

    def mark_compressed(cfg: dict) -> dict:
        cfg.pop("compression_config", None)  # what versions before the transformers integration wrote
        if layers:  # every layer left dense at fit time: a dense model, which stock loaders must take as one
            cfg["quantization_config"] = hf_quantization_config(layers)
        return cfg

    with contextlib.ExitStack() as stack:
        def begin() -> str:
            tmp = stack.enter_context(atomic_output(out, overwrite))
            if as_dir:
                tmp.mkdir()
                if side is not None:
                    copy_model_files(side, tmp, mark_compressed)
                if card is not None:
                    (tmp / "README.md").write_text(card, encoding="utf-8")
            return str(tmp)

        tmp = Path(dist.on_rank0(begin))
        if not as_dir:
            if dist.rank == 0:
                write_safetensors(tmp, entries, meta, tick)
        else:
            dist.all_ok(lambda: write_weights(tmp, entries, meta, max_shard_bytes,
                                              mine=lambda i: i % dist.world == dist.rank, index=dist.rank == 0,
                                              on_tensor=tick))
    dist.barrier()  # no rank returns before rank 0 has renamed the output into place


def summarize(src: Source, plan: Plan, factors: dict[str, dict], out: Path, seconds: float) -> dict:
    total = sum(math.prod(t.shape) for t in src.tensors.values())
    before = sum(lp.dense_params for lp in plan.compressed)
    after = sum(lp.factored_params for lp in plan.compressed)
    layers = []
    for lp in plan.layers:
        rec = {"name": lp.name, "shape": list(lp.shape), "method": lp.method, "rank": lp.rank,
               "linear_rank": lp.linear_rank, "omega": lp.omega, "params_before": lp.dense_params,
               "params_after": lp.factored_params, "rel_error": None, "kept_dense": lp.keep_dense}
        if lp.name in factors:
            f = factors[lp.name]
            rec["rel_error"] = f["rel_error"]
            rec["act_error"] = f.get("act_error")
            rec["start_act_error"] = f.get("start_act_error")
            if f.get("method") is not None:  # a sine fit that fell back to whitened SVD (``fit_layer``)
                rec["fell_back"] = True
                if f.get("sine_act_error") is not None:
                    rec["sine_act_error"] = f["sine_act_error"]
        layers.append(rec)
    out_bytes = sum(p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*.safetensors")))
    return {
        "source": plan.source, "output": str(out), "method": plan.method,
        "params_before": before, "params_after": after,
        "compression_rate": after / before if before else 1.0,
        "model_params_before": total, "model_params_after": total - before + after,
        "model_compression_rate": (total - before + after) / total if total else 1.0,
        "bytes_before": src.total_bytes(), "bytes_after": out_bytes,
        "seconds": round(seconds, 3), "layers": layers,
    }
