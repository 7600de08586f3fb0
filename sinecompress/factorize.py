"""The main job, as one straight line: source → plan → fit each layer → write → summary."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .fit import fit_sine, rel_error, truncated_svd
from .format import ST_TO_TORCH, factor_names, make_metadata
from .plan import LayerPlan, Plan, build_plan
from .sources import INDEX_NAME, SINGLE_NAME, Source, open_source
from .writer import Entry, atomic_output, check_output, write_safetensors

Progress = Callable[[str, int, int], None]  # (layer name, done, total)
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


def factorize(source: str | Path, out: str | Path, *, method: str = "sine", rank: int | None = None,
              param_ratio: float | None = None, omega: float | None = 100.0, targets=(), exclude=(),
              steps: int = 300, seed: int = 0, overwrite: bool = False,
              progress: Progress | None = None) -> dict:
    """Compress ``source`` into ``out`` and return the summary (what ``--json`` prints)."""
    t0 = time.perf_counter()
    out = Path(out)
    check_output(out, overwrite)  # fail before minutes of fitting, not after
    src = open_source(source)
    plan = build_plan(src, method=method, rank=rank, param_ratio=param_ratio, omega=omega,
                      targets=targets, exclude=exclude, seed=seed, steps=steps)
    factors = fit_layers(src, plan, progress)
    write_compressed(src, plan, factors, out, overwrite)
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
        for key, fname in zip(keys, factor_names(lp.name, kind, lp.linear_rank)):
            t = f[key]
            entries.append(Entry(fname, info.dtype, tuple(t.shape), lambda t=t: t))
    return entries


def write_compressed(src: Source, plan: Plan, factors: dict[str, dict], out: Path, overwrite: bool) -> None:
    layers = {lp.name: layer_record(lp, factors[lp.name]) for lp in plan.active}
    meta = make_metadata(layers, plan.to_dict(), plan.source)
    entries = entries_for(src, plan, factors)
    with atomic_output(out, overwrite) as tmp:
        if src.model_dir is None:
            write_safetensors(tmp, entries, meta)
            return
        tmp.mkdir()
        copy_model_files(src.model_dir, tmp)
        write_safetensors(tmp / SINGLE_NAME, entries, meta)
        cfg_path = tmp / "config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            cfg["compression_config"] = {"tool": "sinecompress", "format_version": 1, "method": plan.method,
                                         "layers": sorted(layers)}
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


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
