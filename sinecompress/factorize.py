"""The main job, as one straight line: source → plan → fit each layer → write → summary."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .distributed import Dist, from_env, share
from .errors import InputError
from .fit import fit_sine, rel_error, truncated_svd
from .format import ST_TO_TORCH, factor_names, make_metadata
from .plan import LayerPlan, Plan, build_plan
from .shards import parse_size, write_weights
from .sources import INDEX_NAME, Source, open_source
from .validate import check_targets, nonfinite_reason, warn_kept_dense
from .workdir import SineCompressWarning, WorkDir, factor_shapes, prepare
from .writer import Entry, atomic_output, check_output, write_safetensors

Progress = Callable[[str, int, int], None]  # (layer name, done, total)
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


def factorize(source: str | Path, out: str | Path, *, method: str = "sine", rank: int | None = None,
              param_ratio: float | None = None, omega: float | None = 100.0, targets=(), exclude=(),
              steps: int = 300, seed: int = 0, overwrite: bool = False,
              progress: Progress | None = None, resume: bool = False, max_shard_size: str | int | None = None,
              allow_pickle: bool = False, rules=(), provenance: dict | None = None) -> dict | None:
    """Compress ``source`` into ``out`` and return the summary (what ``--json`` prints).

    Memory holds about one layer at a time: each fitted layer goes to the run's work directory
    (``workdir.py``) and the output is streamed from there. Under ``torchrun`` the layers are split
    across ranks; ranks other than 0 return None. ``rules``: per-layer settings (``plan.Rule``);
    ``provenance``: extra metadata (e.g. the recipe).
    """
    t0 = time.perf_counter()
    out = Path(out)
    dist = from_env()
    shard_bytes = parse_size(max_shard_size) if max_shard_size is not None else None
    check_output(out, overwrite)  # fail before minutes of fitting, not after
    src = open_source(source, allow_pickle=allow_pickle)
    check_targets(src, targets)
    plan = build_plan(src, method=method, rank=rank, param_ratio=param_ratio, omega=omega,
                      targets=targets, exclude=exclude, seed=seed, steps=steps, rules=rules)
    if dist.rank == 0:
        warn_kept_dense(plan)
    work = WorkDir(Path(dist.on_rank0(lambda: str(prepare(out, src, plan, resume).path))))
    dist.all_ok(lambda: fit_into(work, src, plan, progress, dist))
    factors = stored_factors(work, plan)
    write_compressed(src, plan, factors, out, overwrite, shard_bytes, dist, extra=provenance)
    if dist.rank != 0:
        return None
    work.remove()
    return summarize(src, plan, factors, out, time.perf_counter() - t0)


def fit_layer(w: torch.Tensor, lp: LayerPlan, plan: Plan) -> dict:
    """Fit one layer; return its factor tensors (original dtype) and its relative error."""
    dtype = ST_TO_TORCH[lp.dtype]
    w32 = w.float()
    if lp.method == "svd":
        u, v = truncated_svd(w32, lp.rank, seed=plan.seed)
        f = {"u": u.to(dtype), "v": v.to(dtype)}
        f["rel_error"] = rel_error(f["u"].float() @ f["v"].float().T, w32)
        return f
    r = fit_sine(w32, lp.rank - lp.linear_rank, lp.omega, linear_rank=lp.linear_rank,
                 steps=plan.steps, seed=plan.seed)
    f = {k: (r[k].to(dtype) if r.get(k) is not None else None) for k in ("u", "v", "amp", "lin_u", "lin_v")}
    from .layers import sine_weight

    f["rel_error"] = rel_error(sine_weight(f["u"], f["v"], lp.omega, f["amp"], f["lin_u"], f["lin_v"],
                                           dtype=torch.float32), w32)
    return f


def fit_layers(src: Source, plan: Plan, progress: Progress | None = None) -> dict[str, dict]:
    active = plan.active
    out = {}
    for i, lp in enumerate(active):
        if progress:
            progress(lp.name, i, len(active))
        out[lp.name] = fit_layer(src.get(lp.name + ".weight"), lp, plan)
    if progress:
        progress("", len(active), len(active))
    return out


def fit_into(work: WorkDir, src: Source, plan: Plan, progress: Progress | None = None,
             dist: Dist | None = None) -> None:
    """Fit this rank's share of the layers into ``work``, skipping those already there (``--resume``)."""
    dist = dist or Dist()
    todo = [(i, lp) for i, lp in enumerate(plan.layers) if not lp.keep_dense]
    mine = share(todo, dist.world)[dist.rank]
    for j, (i, lp) in enumerate(mine):
        if progress:
            progress(lp.name, j, len(mine))
        if work.record(i, lp) is not None:
            continue
        w = src.get(lp.name + ".weight")
        reason = nonfinite_reason(w)
        f = None if reason else fit_layer(w, lp, plan)
        del w  # one layer in memory at a time
        if f is not None and not math.isfinite(f["rel_error"]):
            reason, f = "the fit diverged (non-finite error)", None
        if reason:
            warnings.warn(f"{lp.name}: {reason}; keeping it dense", SineCompressWarning, stacklevel=2)
            work.save_dense(i, lp, reason)
        else:
            work.save(i, lp, f)
    if progress:
        progress("", len(mine), len(mine))


class StoredFactors(Mapping):
    """One fitted layer's factors, read from the work directory only when the writer asks for them."""

    def __init__(self, work: WorkDir, i: int, rel_error: float, keys):
        self.work, self.i, self.rel_error, self.keys_ = work, i, rel_error, tuple(keys)

    def __getitem__(self, key):
        if key == "rel_error":
            return self.rel_error
        if key not in self.keys_:
            return None
        return self.work.factor(self.i, key)

    def __iter__(self):
        return iter(("rel_error", *self.keys_))

    def __len__(self):
        return 1 + len(self.keys_)


def stored_factors(work: WorkDir, plan: Plan) -> dict[str, StoredFactors]:
    """Every fitted layer's stored result; layers left dense at fit time get ``keep_dense`` set."""
    out = {}
    for i, lp in enumerate(plan.layers):
        if lp.keep_dense:
            continue
        rec = work.record(i, lp)
        if rec is None:
            raise InputError(f"{work.path}: the result of layer {lp.name!r} is missing; rerun with --resume")
        if "dense" in rec:
            lp.keep_dense = rec["dense"]
            continue
        out[lp.name] = StoredFactors(work, i, rec["rel_error"], factor_shapes(lp))
    return out


def layer_record(lp: LayerPlan, f: dict) -> dict:
    return {"name": lp.name, "kind": "sine" if lp.method == "sine" else "lowrank", "shape": list(lp.shape),
            "dtype": lp.dtype, "rank": lp.rank, "linear_rank": lp.linear_rank, "omega": lp.omega,
            "amplitude": "row" if lp.method == "sine" else None, "rel_error": f["rel_error"]}


def entries_for(src: Source, plan: Plan, factors: dict[str, dict]) -> list[Entry]:
    """Output tensors in source order: each factorised weight replaced in place by its factors."""
    by_weight = {lp.name + ".weight": lp for lp in plan.active}
    entries = []
    for name, info in src.tensors.items():
        lp = by_weight.get(name)
        if lp is None:
            entries.append(Entry(name, info.dtype, info.shape, lambda n=name: src.get(n)))
            continue
        f = factors[lp.name]
        kind = "lowrank" if lp.method == "svd" else "sine"
        keys = ("u", "v") if kind == "lowrank" else ("u", "v", "amp", "lin_u", "lin_v")
        shapes = factor_shapes(lp)
        for key, fname in zip(keys, factor_names(lp.name, kind, lp.linear_rank)):
            # Shapes come from the plan, tensors only when written: one factor in memory at a time.
            entries.append(Entry(fname, info.dtype, shapes[key], lambda f=f, key=key: f[key]))
    return entries


def write_compressed(src: Source, plan: Plan, factors: dict[str, dict], out: Path, overwrite: bool,
                     max_shard_bytes: int | None = None, dist: Dist | None = None,
                     extra: dict | None = None) -> None:
    """Stream the output under a temporary name and rename it into place once complete.

    A file source gives a file; a directory source (or ``max_shard_bytes``) gives a directory with
    the side files and the weights, sharded when they exceed ``max_shard_bytes``. With several
    ranks, each writes every ``world``-th shard and rank 0 the index, config and final rename.
    """
    dist = dist or Dist()
    layers = {lp.name: layer_record(lp, factors[lp.name]) for lp in plan.active}
    meta = make_metadata(layers, plan.to_dict(), plan.source, extra)
    entries = entries_for(src, plan, factors)
    as_dir = src.model_dir is not None or max_shard_bytes is not None
    with contextlib.ExitStack() as stack:
        def begin() -> str:
            tmp = stack.enter_context(atomic_output(out, overwrite))
            if as_dir:
                tmp.mkdir()
                if src.model_dir is not None:
                    copy_model_files(src.model_dir, tmp)
            return str(tmp)

        tmp = Path(dist.on_rank0(begin))
        if not as_dir:
            if dist.rank == 0:
                write_safetensors(tmp, entries, meta)
        else:
            dist.all_ok(lambda: write_weights(tmp, entries, meta, max_shard_bytes,
                                              mine=lambda i: i % dist.world == dist.rank, index=dist.rank == 0))
            cfg_path = tmp / "config.json"
            if dist.rank == 0 and cfg_path.exists():
                cfg = json.loads(cfg_path.read_text())
                cfg["compression_config"] = {"tool": "sinecompress", "format_version": 1, "method": plan.method,
                                             "layers": sorted(layers)}
                cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    dist.barrier()  # no rank returns before rank 0 has renamed the output into place


def copy_model_files(model_dir: Path, dest: Path) -> None:
    """Copy config, tokenizer and other side files; never the weights (they are rewritten)."""
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir)
        if p.is_dir() or p.name.endswith(WEIGHT_FILES) or p.name == INDEX_NAME or rel.parts[0].startswith("."):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest / rel)


def summarize(src: Source, plan: Plan, factors: dict[str, dict], out: Path, seconds: float) -> dict:
    total = sum(_numel(t.shape) for t in src.tensors.values())
    before = sum(lp.dense_params for lp in plan.active)
    after = sum(lp.factored_params for lp in plan.active)
    layers = []
    for lp in plan.layers:
        rec = {"name": lp.name, "shape": list(lp.shape), "method": lp.method, "rank": lp.rank,
               "linear_rank": lp.linear_rank, "omega": lp.omega, "params_before": lp.dense_params,
               "params_after": lp.factored_params, "rel_error": None, "kept_dense": lp.keep_dense}
        if lp.name in factors:
            rec["rel_error"] = factors[lp.name]["rel_error"]
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


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
