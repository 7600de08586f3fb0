"""The fit stage: one layer at a time, in memory (calibrated runs) or into the work directory
(weight-only runs, which is what gives ``--resume`` and several processes)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from ..dtypes import TO_TORCH
from ..errors import SineCompressWarning
from ..fit.omega import AUTO_OMEGA
from ..fit.sine import fit_calibrated, fit_sine
from ..fit.svd import LowRankRows, rel_error, truncated_svd
from ..fit.whiten import activation_error
from ..io.sources import Source
from ..nn.surgery import factors_of
from ..progress import QUIET, Progress
from ..weights import sine_weight
from .calibrate import Calibration
from .distributed import Dist, share
from .plan import LayerPlan, Plan
from .validate import nonfinite_reason
from .workdir import WorkDir

FACTOR_KEYS = ("u", "v", "amp", "lin_u", "lin_v")


def fit_layer(w: torch.Tensor, lp: LayerPlan, plan: Plan, gram: torch.Tensor | None = None,
              device: str = "cpu", measure: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Fit one layer; return its factor tensors (original dtype), its ω and its errors.

    With ``gram`` (the layer's calibration XᵀX) the fit is activation-aware and ``act_error`` is
    reported beside the weight-space ``rel_error``. A sine layer without ω (``--omega auto``) gets
    ``AUTO_OMEGA`` (ω is a gauge in these fits, ``fit/omega.py``); the result's ``omega`` is the one used.
    ``measure`` = (weight, gram): report the errors against these instead of the fitted target (the sequential fit's shifted
    target is not the layer's weight).
    """
    closed_form = lp.method in ("svd", "wsvd") and (gram is None or lp.method == "svd")
    # A closed-form SVD and the errors read the weight a block of rows at a time in its own dtype: an untied
    # LM head (32000×2048 in bf16) is not copied whole to float32.
    wt = w if closed_form else w.float()
    omega = lp.omega
    if lp.method == "sine" and omega is None:
        omega = AUTO_OMEGA
    fell_back = None  # the sine fit's own error, when whitened SVD fitted the layer better
    if gram is not None and lp.method != "svd":  # svd stays the plain baseline; its act_error is still measured
        r = fit_calibrated(wt.to(device), gram.to(device), lp.method, lp.rank, lp.linear_rank, omega,
                           steps=plan.steps, seed=plan.seed)
        r = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
        wsvd = {k: r.pop(k, None) for k in ("wsvd_u", "wsvd_v", "wsvd_act_error")}
        # Both errors are in the fit's own metric (a sequential fit's shifted target's), so they compare.
        if plan.fallback and wsvd["wsvd_act_error"] is not None and wsvd["wsvd_act_error"] < r["act_error"]:
            fell_back = r["act_error"]
            r = {"u": wsvd["wsvd_u"], "v": wsvd["wsvd_v"], "start_act_error": wsvd["wsvd_act_error"]}
            lp, omega = lp.as_method("wsvd"), None
    elif closed_form:  # wsvd with no Gram (a layer outside the block stack): its weight's SVD
        r = dict(zip(("u", "v"), truncated_svd(wt, lp.rank, seed=plan.seed, dtype=TO_TORCH[lp.dtype])))
    else:
        r = fit_sine(wt, lp.rank, omega, linear_rank=lp.linear_rank, steps=plan.steps, seed=plan.seed)
    if measure is not None:
        r.pop("start_act_error", None)  # in the target's metric: not comparable with the reported errors
        wt, gram = measure[0].float(), measure[1]
    f = finish_factors(r, lp, wt, gram, omega)
    if fell_back is not None:
        f["method"] = lp.method  # ``fitted`` gives the layer's plan as stored
        if measure is None:  # a sequential fit's is in the shifted target's metric, not the reported one
            f["sine_act_error"] = fell_back
    return f


def fitted(lp: LayerPlan, f) -> LayerPlan:
    """The layer's plan as fitted: a sine layer whose fit fell back to whitened SVD is stored as one."""
    method = f.get("method")
    return lp.as_method(method) if method is not None and method != lp.method else lp


def finish_factors(r: dict, lp: LayerPlan, w32: torch.Tensor, gram: torch.Tensor | None = None,
                   omega: float | None = None) -> dict:
    """Cast factors to the layer's dtype and measure the errors of what will actually be written. Takes the
    factors out of ``r`` as it casts them: a large factor and its cast are not both held (an untied head's
    u in float32 is 188 MiB)."""
    dtype = TO_TORCH[lp.dtype]
    keys = FACTOR_KEYS if lp.kind == "sine" else ("u", "v")
    f = {k: (r.pop(k).to(dtype) if r.get(k) is not None else None) for k in keys}
    if r.get("bias") is not None:
        f["bias"] = r["bias"].to(dtype)
    if lp.kind == "sine":
        f["omega"] = omega if omega is not None else lp.omega
        w_hat = sine_weight(f["u"], f["v"], f["omega"], f["amp"], f["lin_u"], f["lin_v"], dtype=torch.float32)
    else:
        w_hat = LowRankRows(f["u"], f["v"])
    f["rel_error"] = rel_error(w_hat, w32)
    if gram is not None:
        f["act_error"] = activation_error(w_hat, w32, gram)
        if "start_act_error" in r:
            f["start_act_error"] = r["start_act_error"]
    return f


def retuned(module, lp: LayerPlan, w32: torch.Tensor, gram: torch.Tensor | None, before: dict) -> dict:
    """The factors of a tuned ``module``, measured like a fit's, keeping what the fit chose and recorded
    (its ω: the plan's is still None under --omega auto; its starting error; a fallback's method and the
    sine fit's error). ``lp``: the layer's plan as fitted."""
    f = finish_factors(factors_of(module), lp, w32, gram, before.get("omega"))
    for key in ("start_act_error", "method", "sine_act_error"):
        if before.get(key) is not None:
            f[key] = before[key]
    return f


def fit_layers(src: Source, plan: Plan, progress: Progress = QUIET, cal: Calibration | None = None,
               device: str = "cpu") -> dict[str, dict]:
    """Fit every compressed layer in memory (each to the original model's activations, given ``cal``)."""
    todo = plan.compressed
    out = {}
    progress.stage("fitting", len(todo))
    for i, lp in enumerate(todo):
        progress.advance(i, lp.name)
        gram = cal.grams[lp.name]["gram"] if cal is not None else None
        out[lp.name] = fit_layer(lp.oriented(src.get(lp.name + ".weight")), lp, plan, gram, device)
    progress.advance(len(todo))
    return out


def fit_into(work: WorkDir, src: Source, plan: Plan, progress: Progress = QUIET,
             dist: Dist | None = None) -> None:
    """Fit this rank's share of the layers into ``work``, skipping those already there (``--resume``)."""
    dist = dist or Dist()
    todo = [(i, lp) for i, lp in enumerate(plan.layers) if not lp.keep_dense]
    mine = share(todo, dist.world)[dist.rank]
    progress.stage("fitting", len(mine))
    for j, (i, lp) in enumerate(mine):
        progress.advance(j, lp.name)
        done = work.record(i, lp)
        if done is not None and "dense" not in done:
            continue
        w = lp.oriented(src.get(lp.name + ".weight"))
        reason = nonfinite_reason(w)
        if done is not None and reason:  # kept dense earlier for a reason that still holds
            continue
        f = None if reason else fit_layer(w, lp, plan)
        del w  # one layer in memory at a time
        if f is not None and not math.isfinite(f["rel_error"]):
            reason, f = "the fit diverged (non-finite error)", None
        if reason:
            warnings.warn(f"{lp.name}: {reason}; keeping it dense", SineCompressWarning, stacklevel=2)
            work.save_dense(i, lp, reason)
        else:
            work.save(i, lp, f)
    progress.advance(len(mine))


def settle(plan: Plan, factors: dict[str, dict], dense: dict[str, str] | None = None) -> Plan:
    """The plan as fitted: each sine layer's ω as chosen (``--omega auto``), the sine layers whose fit fell
    back to whitened SVD stored as such, and the layers that the fit left dense (``dense``: name -> reason)
    marked so."""
    dense = dense or {}
    layers = []
    for lp in plan.layers:
        if lp.name in dense:
            lp = dataclasses.replace(lp, keep_dense=dense[lp.name])
        elif lp.name in factors:
            lp = fitted(lp, factors[lp.name])
            if lp.kind == "sine" and factors[lp.name].get("omega") is not None:
                lp = dataclasses.replace(lp, omega=factors[lp.name]["omega"])
        layers.append(lp)
    return plan.with_layers(layers)
