"""The main job, as one straight line: source → plan → calibrate → fit each layer → (fine-tune) → write → summary."""

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

from .calibrate import Calibration, calibrate
from .distributed import Dist, from_env, share
from .errors import InputError, UsageError
from .fit import fit_sine, rel_error, truncated_svd
from .format import ST_TO_TORCH, factor_names, make_metadata
from .plan import LayerPlan, Plan, build_plan
from .shards import parse_size, write_weights
from .sources import INDEX_NAME, SINGLE_NAME, Source, open_source
from .validate import check_targets, nonfinite_reason, warn_kept_dense
from .workdir import SineCompressWarning, WorkDir, factor_shapes, prepare
from .writer import Entry, atomic_output, check_output, write_safetensors

Progress = Callable[[str, int, int], None]  # (layer name, done, total)
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


def factorize(source: str | Path, out: str | Path, *, method: str = "sine", rank: int | None = None,
              param_ratio: float | None = None, omega: float | str | None = 100.0, targets=(), exclude=(),
              steps: int = 300, seed: int = 0, overwrite: bool = False,
              progress: Progress | None = None, resume: bool = False, max_shard_size: str | int | None = None,
              allow_pickle: bool = False, rules=(), provenance: dict | None = None,
              calib: str | Path | None = None, calibration: bool | None = None, calib_samples: int = 256,
              seq_len: int = 128, ft_steps: int = 0, lr: float = 1e-2, device: str = "cpu", model=None,
              ft_progress=None, allocate: str = "uniform", sequential: bool | None = None) -> dict | None:
    """Compress ``source`` into ``out`` and return the summary (what ``--json`` prints).

    ``steps`` are the per-layer fit's steps; ``ft_steps`` the end-to-end calibration fine-tune's
    (0: none). Calibration (``calibration``: None = automatic, on for text model directories) makes
    every fit activation-aware; ``model`` supplies the network for sources without a config.json.
    Weight-only runs hold about one layer at a time: each fitted layer goes to the run's work
    directory (``workdir.py``), which also gives ``resume``, and the output is streamed from there.
    Under ``torchrun`` their layers are split across ranks; ranks other than 0 return None.
    ``rules``: per-layer settings (``plan.Rule``); ``provenance``: extra metadata (e.g. the recipe).
    ``sequential`` (calibrated runs): fit each layer to the outputs of the already compressed earlier
    layers (``sequential.py``) rather than to the original activations. None (default): only when there
    is no fine-tune, the case where it measured better (docs/fitting.md).
    ``allocate="sensitivity"`` spreads the ``param_ratio`` budget across layers by their spectra
    (``allocate.py``) instead of giving every layer the same ratio.
    """
    from .distill import resolve_device

    t0 = time.perf_counter()
    out = Path(out)
    dist = from_env()
    shard_bytes = parse_size(max_shard_size) if max_shard_size is not None else None
    check_output(out, overwrite)  # fail before minutes of fitting, not after
    device = resolve_device(device)
    src = open_source(source, allow_pickle=allow_pickle)
    check_targets(src, targets)
    plan = build_plan(src, method=method, rank=rank, param_ratio=param_ratio, omega=omega,
                      targets=targets, exclude=exclude, seed=seed, steps=steps, rules=rules, allocate=allocate)
    if dist.rank == 0:
        warn_kept_dense(plan)
    cal, note = calibrate(src, [lp.name for lp in plan.active], calib=calib, enabled=calibration,
                          samples=calib_samples, seq_len=seq_len, model=model, device=device)
    if cal is None and any(lp.method == "wsvd" for lp in plan.active):
        raise UsageError(f"--method wsvd needs calibration data, and {note.split(';')[0]}")
    allocation = {"mode": "uniform"}
    if plan.allocate == "sensitivity":
        from .allocate import apply_sensitivity

        allocation = apply_sensitivity(plan, src, cal)
    tune, work = None, None
    if cal is None:
        work = WorkDir(Path(dist.on_rank0(lambda: str(prepare(out, src, plan, resume).path))))
        dist.all_ok(lambda: fit_into(work, src, plan, progress, dist))
        factors = stored_factors(work, plan)
    else:
        # Calibrated fits need the model's activations and tune all layers together: one process, in memory.
        if dist.world > 1 or resume:
            raise UsageError("--resume and multi-process runs are for weight-only fits; add --no-calib")
        if sequential is None:
            sequential = ft_steps <= 0
        if sequential:
            from .sequential import fit_sequential

            factors = fit_sequential(src, plan, cal, progress, device)
        else:
            factors = fit_layers(src, plan, progress, cal, device)
        if ft_steps > 0:
            from .finetune import finetune

            tune = finetune(src, plan, factors, cal, steps=ft_steps, lr=lr, seed=seed, device=device,
                            progress=ft_progress)
    write_compressed(src, plan, factors, out, overwrite, shard_bytes, dist, extra=provenance)
    if dist.rank != 0:
        return None
    if work is not None:
        work.remove()
    summary = summarize(src, plan, factors, out, time.perf_counter() - t0)
    summary["calibration"] = cal.record() if cal else {"used": False}
    summary["calibration"]["note"] = note
    summary["finetune"] = tune
    summary["allocation"] = allocation
    summary["sequential"] = bool(sequential and cal is not None)
    return summary


def fit_layer(w: torch.Tensor, lp: LayerPlan, plan: Plan, gram: torch.Tensor | None = None,
              device: str = "cpu", measure: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Fit one layer; return its factor tensors (original dtype) and its errors.

    With ``gram`` (the layer's calibration XᵀX) the fit is activation-aware and ``act_error`` is
    reported beside the weight-space ``rel_error``. A sine layer without ω (``--omega auto``) gets
    one from ``omega.choose_omega`` first. ``measure`` = (weight, gram): report the errors against
    these instead of the fitted target (the sequential fit's shifted target is not the layer's weight).
    """
    w32 = w.float()
    trials = None
    if lp.method == "sine" and lp.omega is None:
        from .omega import choose_omega

        lp.omega, trials = choose_omega(w32.to(device), lp.rank, lp.linear_rank, plan.steps, plan.seed,
                                        gram=None if gram is None else gram.to(device))
    if gram is not None and lp.method != "svd":  # svd stays the plain baseline; its act_error is still measured
        from .fit_activation import fit_calibrated

        r = fit_calibrated(w32.to(device), gram.to(device), lp.method, lp.rank, lp.linear_rank, lp.omega,
                           steps=plan.steps, seed=plan.seed)
        r = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
    elif lp.method == "svd":
        u, v = truncated_svd(w32, lp.rank, seed=plan.seed)
        r = {"u": u, "v": v}
    else:
        r = fit_sine(w32, lp.rank - lp.linear_rank, lp.omega, linear_rank=lp.linear_rank,
                     steps=plan.steps, seed=plan.seed)
    if measure is not None:
        r.pop("start_act_error", None)  # in the target's metric: not comparable with the reported errors
        w32, gram = measure[0].float(), measure[1]
    f = finish_factors(r, lp, w32, gram)
    if trials:
        f["omega_trials"] = {f"{k:g}": round(v, 6) for k, v in trials.items()}
    return f


def finish_factors(r: dict, lp: LayerPlan, w32: torch.Tensor, gram: torch.Tensor | None = None) -> dict:
    """Cast factors to the layer's dtype and measure the errors of what will actually be written."""
    from .layers import sine_weight

    dtype = ST_TO_TORCH[lp.dtype]
    keys = ("u", "v") if lp.method != "sine" else ("u", "v", "amp", "lin_u", "lin_v")
    f = {k: (r[k].to(dtype) if r.get(k) is not None else None) for k in keys}
    if r.get("bias") is not None:
        f["bias"] = r["bias"].to(dtype)
    if lp.method == "sine":
        w_hat = sine_weight(f["u"], f["v"], lp.omega, f["amp"], f["lin_u"], f["lin_v"], dtype=torch.float32)
    else:
        w_hat = f["u"].float() @ f["v"].float().T
    f["rel_error"] = rel_error(w_hat, w32)
    if gram is not None:
        from .fit_activation import chol, whitened_error

        f["act_error"] = whitened_error(w_hat, w32, chol(gram))
        if "start_act_error" in r:
            f["start_act_error"] = r["start_act_error"]
    return f


def fit_layers(src: Source, plan: Plan, progress: Progress | None = None, cal: Calibration | None = None,
               device: str = "cpu") -> dict[str, dict]:
    active = plan.active
    out = {}
    for i, lp in enumerate(active):
        if progress:
            progress(lp.name, i, len(active))
        gram = cal.grams[lp.name]["gram"] if cal is not None else None
        out[lp.name] = fit_layer(src.get(lp.name + ".weight"), lp, plan, gram, device)
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

    def __init__(self, work: WorkDir, i: int, record: dict, keys):
        self.work, self.i, self.keys_ = work, i, tuple(keys)
        self.scalars = {k: v for k, v in record.items() if k != "omega"}  # rel_error, act_error, ...

    def __getitem__(self, key):
        if key in self.scalars:
            return self.scalars[key]
        if key not in self.keys_:
            return None
        return self.work.factor(self.i, key)

    def __iter__(self):
        return iter((*self.scalars, *self.keys_))

    def __len__(self):
        return len(self.scalars) + len(self.keys_)


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
        if lp.method == "sine" and rec.get("omega") is not None:
            lp.omega = rec["omega"]  # chosen by --omega auto, possibly on another rank or an earlier run
        out[lp.name] = StoredFactors(work, i, rec, factor_shapes(lp))
    return out


def layer_record(lp: LayerPlan, f: dict) -> dict:
    return {"name": lp.name, "kind": "sine" if lp.method == "sine" else "lowrank", "shape": list(lp.shape),
            "dtype": lp.dtype, "rank": lp.rank, "linear_rank": lp.linear_rank, "omega": lp.omega,
            "amplitude": "row" if lp.method == "sine" else None, "rel_error": f["rel_error"],
            "act_error": f.get("act_error"), "method": lp.method}


def entries_for(src: Source, plan: Plan, factors: dict[str, dict]) -> list[Entry]:
    """Output tensors in source order: each factorised weight replaced in place by its factors."""
    by_weight = {lp.name + ".weight": lp for lp in plan.active}
    # A calibration fine-tune also tunes the biases of the compressed layers.
    tuned = {lp.name + ".bias": factors[lp.name]["bias"] for lp in plan.active if factors[lp.name].get("bias") is not None}
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
        kind = "sine" if lp.method == "sine" else "lowrank"
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


def write_like_source(src: Source, out: Path, entries: list[Entry], meta: dict[str, str], overwrite: bool) -> Path | None:
    """One-file dense output shaped like ``src``: a file for a file, a model directory (side files copied)
    for a directory. Returns the output's ``config.json`` path, if any, for the caller to edit before the rename."""
    with atomic_output(out, overwrite) as tmp:
        if src.model_dir is None:
            write_safetensors(tmp, entries, meta)
            return None
        tmp.mkdir()
        copy_model_files(src.model_dir, tmp)
        write_safetensors(tmp / SINGLE_NAME, entries, meta)
        cfg = tmp / "config.json"
        if cfg.exists():
            doc = json.loads(cfg.read_text())
            doc.pop("compression_config", None)  # dense output: nothing to decompress
            cfg.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out / "config.json"


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
            f = factors[lp.name]
            rec["rel_error"] = f["rel_error"]
            rec["act_error"] = f.get("act_error")
            rec["start_act_error"] = f.get("start_act_error")
            if "omega_trials" in f:
                rec["omega_trials"] = f["omega_trials"]
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
