"""The optional end-to-end stage of ``factorize``: put the fitted layers into the calibration model
and tune them against the original model's outputs (``distill.distill``)."""

from __future__ import annotations

import copy

from .calibrate import Calibration
from .distill import compressed_module, distill, factors_of, swap_in
from .plan import Plan


def finetune(src, plan: Plan, factors: dict[str, dict], cal: Calibration, *, steps: int, lr: float = 1e-2,
             seed: int = 0, device: str = "cpu", progress=None) -> dict:
    """Tune ``factors`` in place (and the compressed layers' biases); return the run's record."""
    from .factorize import finish_factors

    teacher = cal.model
    student = copy.deepcopy(teacher).cpu()
    for lp in plan.active:
        f = factors[lp.name]
        bias_name = lp.name + ".bias"
        bias = src.get(bias_name) if bias_name in src.tensors else None
        kind = "sine" if lp.method == "sine" else "lowrank"
        swap_in(student, lp.name, compressed_module(kind, {k: v for k, v in f.items() if k in
                                                          ("u", "v", "amp", "lin_u", "lin_v")}, bias, lp.omega))
    names = [lp.name for lp in plan.active]
    record = distill(student, teacher, cal.data.batches, names, steps=steps, lr=lr, seed=seed, device=device,
                     progress=progress)
    student.cpu()
    for lp in plan.active:
        tuned = factors_of(student.get_submodule(lp.name))
        w32 = src.get(lp.name + ".weight").float()
        start = factors[lp.name].get("start_act_error")
        trials = factors[lp.name].get("omega_trials")
        factors[lp.name] = finish_factors(tuned, lp, w32, cal.grams[lp.name]["gram"])
        if start is not None:
            factors[lp.name]["start_act_error"] = start
        if trials:
            factors[lp.name]["omega_trials"] = trials
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
