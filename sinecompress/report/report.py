"""`sinecompress report`: parameters, compression, error and rank spectra of a checkpoint, as one dict.

The dict is the ``--json`` output; its schema (version ``SCHEMA_VERSION``) is documented in
docs/report.md and pinned by tests/test_report.py. One layer (plus its original) is in memory at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..adapters.io import adapter_delta_weights
from ..config import CalibrationConfig
from ..errors import InputError, UsageError
from ..fit.svd import rel_error
from ..fit.whiten import activation_error
from ..io.format import LayerRecord, dense_from_factors, read_layers, read_metadata
from ..io.open import open_source
from ..io.sources import Source, tied_heads
from ..matching import compile_patterns, full_match, linear_modules, module_name, select_targets
from ..pipeline.calibrate import calibrate
from ..version import __version__
from .spectra import DEFAULT_TOP, EPS, Spectrum, singular_values

SCHEMA_VERSION = 1
DEFAULT_RANKS = (8, 32)  # what a rank-k factorisation of a dense layer would keep
SPECTRA = ("original", "weight", "uv", "sine")

LAYER_KEYS = ("name", "kind", "shape", "dtype", "rank", "linear_rank", "omega", "params_dense",
              "params_factored", "compression_rate", "numerical_rank", "effective_rank", "stable_rank",
              "rel_error", "fit_rel_error", "activation_error", "keep", "spectra")
SPECTRUM_KEYS = ("exact", "numerical_rank", "numerical_rank_is_lower_bound", "effective_rank", "stable_rank",
                 "sigma_max", "tolerance", "singular_values")
KEEP_KEYS = ("rank", "params", "energy", "rel_error")

Progress = Callable[[str, int, int], None]


def report(source: str | Path, against: str | Path | None = None, layers: str | None = None,
           calib: str | Path | None = None, exact: bool = False, rank: int | list[int] | None = None,
           rtol: float | None = None, top: int = DEFAULT_TOP, progress: Progress | None = None) -> dict:
    """Report on a dense, compressed (format v1) or adapter checkpoint; see docs/report.md for the schema.

    ``against``: the dense original of a compressed ``source`` (adds per-layer error and its spectrum).
    ``layers``: regex, full-matched against module names. ``exact``: full SVD for every layer.
    ``rank``: rank(s) k at which to show what a truncated SVD of the original keeps.
    ``rtol``: relative numerical-rank tolerance (σ_i > rtol·σ_max) instead of numpy's default rule.
    """
    t0 = time.perf_counter()
    if rtol is not None and not (0 < rtol < 1):
        raise UsageError(f"--rtol must be between 0 and 1, got {rtol}")
    if top < 1:
        raise UsageError(f"--top must be a positive integer, got {top}")
    ranks = _ranks(rank)
    path = Path(str(source))
    if path.is_dir() and (path / "adapter_config.json").exists():
        return _adapter_report(path, layers, exact, rtol, top, t0)
    src = open_source(source)
    doc = read_metadata(src.metadata, src.display)
    orig = _open_original(against) if against is not None else None
    ctx = {"exact": exact or None, "rtol": rtol, "top": max([top, *ranks]), "ranks": ranks, "grams": None}
    records = None
    if doc is None:
        names = _dense_names(src, layers)
        recs = {n: {"name": n, "kind": "dense"} for n in names}
    else:
        records = read_layers(src)
        recs = {name: _as_row(rec) for name, rec in records.items()}
        names = _narrow(list(recs), layers, src.display)
    if calib is not None:
        ctx["grams"] = _grams(orig, names, calib)
    rows = []
    for i, name in enumerate(names):
        if progress:
            progress(name, i, len(names))
        rows.append(_layer(src, recs[name], orig, ctx))
    if progress:
        progress("", len(names), len(names))
    return _totals(src, records, orig, rows, rtol, t0)


def _ranks(rank) -> list[int]:
    if rank is None:
        return list(DEFAULT_RANKS)
    ranks = [rank] if isinstance(rank, int) else list(rank)
    bad = [k for k in ranks if not isinstance(k, int) or k < 1]
    if bad:
        raise UsageError(f"--rank must be positive integers, got {bad[0]!r}")
    return sorted(set(ranks))


def _open_original(against) -> Source:
    orig = open_source(against)
    if read_metadata(orig.metadata, orig.display) is not None:
        raise InputError(f"{orig.display}: --against must be the dense original, but this is a compressed "
                         "checkpoint; pass the file or directory you factorised")
    return orig


def _candidates(src: Source) -> list[str]:
    return [n for n in linear_modules(src.shapes, src.dtypes) if _has_entries(src, n)]


def _has_entries(src: Source, name: str) -> bool:
    """An empty (0×n) weight has no spectrum and no rate to report."""
    return all(src.shapes[name + ".weight"])


def _narrow(names: list[str], layers: str | None, where: str) -> list[str]:
    if layers is None:
        return names
    pats = compile_patterns([layers], "--layers")
    chosen = [n for n in names if full_match(pats, n)]
    if not chosen:
        hint = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UsageError(f"--layers {layers!r} matches no layer in {where} (full match against module names "
                         f"such as {hint or 'none'})")
    return chosen


def _dense_names(src: Source, layers: str | None) -> list[str]:
    if layers is not None:  # an explicit pattern may pick embeddings and heads too
        return _narrow(_candidates(src), layers, src.display)
    names = [n for n in select_targets(src.shapes, src.dtypes, tied=tied_heads(src), source=src.display)
             if _has_entries(src, n)]
    if not names:
        raise InputError(f"{src.display}: no 2-D floating-point weight to report on")
    return names


def _as_row(rec: LayerRecord) -> dict:
    return dict(rec.to_json(), params_factored=rec.params, record=rec)


def _spectrum(w: torch.Tensor, ctx: dict) -> Spectrum:
    if not torch.isfinite(w).all():
        raise InputError("non-finite values (NaN/Inf) in a weight; the checkpoint is corrupt")
    return singular_values(w, exact=ctx["exact"], top=ctx["top"])


def _layer(src: Source, rec: dict, orig: Source | None, ctx: dict) -> dict:
    name, kind = rec["name"], rec["kind"]
    spectra: dict[str, Spectrum | None] = dict.fromkeys(SPECTRA)
    try:
        if kind == "dense":
            w = src.get(name + ".weight").float()
            m, n = w.shape
        else:
            m, n = rec["shape"]
            w = dense_from_factors(rec["record"], src.get).float()
        spectra["weight"] = _spectrum(w, ctx)
        if kind == "sine":
            phase = src.get(f"{name}.sine_u").float() @ src.get(f"{name}.sine_v").float().T
            spectra["uv"] = _spectrum(phase, ctx)
            spectra["sine"] = _spectrum(torch.sin(phase.mul_(rec["omega"])), ctx)
            del phase
        elif kind == "lowrank":
            spectra["uv"] = spectra["weight"]
        err = act_err = None
        if orig is not None:
            transposed = kind != "dense" and rec["record"].transposed
            wo = _original_weight(orig, name, (m, n), transposed)
            spectra["original"] = _spectrum(wo, ctx)
            err = rel_error(w, wo)
            if ctx["grams"] is not None:
                act_err = activation_error(w, wo, ctx["grams"][name]["gram"])
            del wo
        del w
    except InputError as e:
        raise InputError(f"{src.display}: layer {name!r}: {e}") from None
    basis = spectra["original"] or (spectra["weight"] if kind == "dense" else None)
    ranks = ctx["ranks"] if kind == "dense" else sorted({rec["rank"], *ctx["ranks"]})
    keep = [_keep(basis, k, m, n) for k in ranks if k <= min(m, n)] if basis is not None else []
    w_spec = spectra["weight"]
    dense_p = m * n
    fact_p = rec.get("params_factored", dense_p)
    return {
        "name": name, "kind": kind, "shape": [m, n], "dtype": rec.get("dtype") or src.tensors[name + ".weight"].dtype,
        "rank": rec.get("rank"), "linear_rank": rec.get("linear_rank", 0 if kind != "dense" else None),
        "omega": rec.get("omega"), "params_dense": dense_p, "params_factored": fact_p,
        "compression_rate": fact_p / dense_p,
        "numerical_rank": w_spec.numerical_rank(ctx["rtol"]),
        "effective_rank": _round(w_spec.effective_rank()),
        "stable_rank": round(w_spec.stable_rank(), 4),
        "rel_error": None if err is None else round(err, 6),
        "fit_rel_error": rec.get("rel_error"),
        "activation_error": None if act_err is None else round(act_err, 6),
        "keep": keep,
        "spectra": {k: (None if s is None else s.summary(ctx["rtol"])) for k, s in spectra.items()},
    }


def _grams(orig: Source | None, names: list[str], calib) -> dict:
    """Calibration Gram matrices XᵀX of the original model's layers: ``calib`` is a file or "builtin"."""
    if orig is None:
        raise UsageError("--calib needs --against ORIGINAL: the activation error compares the compressed "
                         "layers with the original model's on its own inputs")
    source = None if str(calib) == "builtin" else str(calib)
    cal, note = calibrate(orig, names, CalibrationConfig(enabled=True, source=source))
    if cal is None:
        raise UsageError(f"--calib: {note}")
    return cal.grams


def _original_weight(orig: Source, name: str, shape: tuple[int, int], transposed: bool = False) -> torch.Tensor:
    """The original's weight out×in, as the compressed layer's (a Conv1D stores it in×out)."""
    key = name + ".weight"
    if key not in orig.tensors:
        raise InputError(f"--against {orig.display} has no tensor {key!r}; is it the checkpoint you factorised?")
    stored = tuple(reversed(shape)) if transposed else tuple(shape)
    if tuple(orig.tensors[key].shape) != stored:
        raise InputError(f"--against {orig.display}: {key!r} has shape {list(orig.tensors[key].shape)}, "
                         f"the compressed layer stores {list(stored)}")
    w = orig.get(key).float()
    return w.T if transposed else w


def _keep(s: Spectrum, k: int, m: int, n: int) -> dict:
    e = s.energy(k)
    return {"rank": k, "params": k * (m + n), "energy": None if e is None else round(e, 6),
            "rel_error": None if e is None else round(math.sqrt(max(0.0, 1.0 - e)), 6)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _totals(src: Source, records: dict[str, LayerRecord] | None, orig: Source | None, rows: list[dict],
            rtol, t0) -> dict:
    model_after = sum(math.prod(t.shape) for t in src.tensors.values())
    model_before = model_after
    if records is not None:  # every compressed layer counts for the whole model, reported or not
        for rec in records.values():
            m, n = rec.shape
            model_before += m * n - rec.params
    before = sum(r["params_dense"] for r in rows)
    after = sum(r["params_factored"] for r in rows)
    errs = [r["rel_error"] for r in rows if r["rel_error"] is not None]
    act = [r["activation_error"] for r in rows if r["activation_error"] is not None]
    return {
        "schema_version": SCHEMA_VERSION, "tool_version": __version__, "source": src.display,
        "against": None if orig is None else orig.display,
        "input_kind": "dense" if records is None else "compressed",
        "tolerance": _tolerance_doc(rtol), "seconds": round(time.perf_counter() - t0, 3),
        "params_before": before, "params_after": after,
        "compression_rate": after / before if before else 1.0,
        "model_params_before": model_before, "model_params_after": model_after,
        "model_compression_rate": model_after / model_before if model_before else 1.0,
        "bytes_on_disk": src.total_bytes(), "bytes_original": None if orig is None else orig.total_bytes(),
        "mean_rel_error": round(sum(errs) / len(errs), 6) if errs else None,
        "activation_error": round(sum(act) / len(act), 6) if act else None,
        "layers": rows,
    }


def _tolerance_doc(rtol: float | None) -> str:
    if rtol is not None:
        return f"sigma_i > {rtol:g} * sigma_max"
    return f"sigma_i > max(m, n) * {EPS:.3g} * sigma_max"


def _adapter_report(path: Path, layers: str | None, exact: bool, rtol, top: int, t0) -> dict:
    """Spectra of an adapter's ΔW per layer."""
    ctx = {"exact": exact or None, "rtol": rtol, "top": top, "ranks": []}
    deltas = adapter_delta_weights(path)
    items = deltas.items() if hasattr(deltas, "items") else deltas
    pats = compile_patterns([layers], "--layers") if layers is not None else None
    rows = []
    for name, dw in items:
        name = module_name(name)
        if pats is not None and not full_match(pats, name):
            continue
        s = _spectrum(dw.float(), ctx)
        m, n = dw.shape
        rows.append({
            "name": name, "kind": "adapter_delta", "shape": [m, n], "dtype": str(dw.dtype).replace("torch.", ""),
            "rank": None, "linear_rank": None, "omega": None, "params_dense": m * n, "params_factored": None,
            "compression_rate": None, "numerical_rank": s.numerical_rank(rtol),
            "effective_rank": _round(s.effective_rank()), "stable_rank": round(s.stable_rank(), 4),
            "rel_error": None, "fit_rel_error": None, "activation_error": None, "keep": [],
            "spectra": {"original": None, "weight": s.summary(rtol), "uv": None, "sine": None},
        })
        del dw
    if pats is not None and not rows:
        raise UsageError(f"--layers {layers!r} matches no adapted layer in {path}")
    return {
        "schema_version": SCHEMA_VERSION, "tool_version": __version__, "source": str(path), "against": None,
        "input_kind": "adapter", "tolerance": _tolerance_doc(rtol), "seconds": round(time.perf_counter() - t0, 3),
        "params_before": None, "params_after": None, "compression_rate": None, "model_params_before": None,
        "model_params_after": None, "model_compression_rate": None,
        "bytes_on_disk": sum(p.stat().st_size for p in path.rglob("*.safetensors")), "bytes_original": None,
        "mean_rel_error": None, "activation_error": None, "layers": rows,
    }
