"""The optional end-to-end stage of ``factorize``: put the fitted layers into the calibration model
and tune them against the original model's outputs (``distill.distill``)."""

from __future__ import annotations

import copy

import torch

from ..io.sources import Source
from ..nn.surgery import build_module, swap_module
from ..progress import QUIET, Progress
from .calibrate import Calibration
from .distill import distill
from .fitting import retuned
from .plan import Plan


def finetune(src: Source, plan: Plan, factors: dict[str, dict], cal: Calibration, *, steps: int,
             lr: float = 1e-2, seed: int = 0, device: str = "cpu", progress: Progress = QUIET) -> tuple[dict, dict]:
    """Tune the fitted factors (and the compressed layers' biases) against the original model.

    Returns (the tuned factors, the run's record); ``factors`` is left as it was.
    """
    teacher = cal.model
    student = copy.deepcopy(teacher).cpu()
    for lp in plan.compressed:
        bias = src.get(lp.name + ".bias") if lp.name + ".bias" in src.tensors else None
        swap_module(student, lp.name, build_module(lp.record(), factors[lp.name], bias, dtype=torch.float32))
    names = [lp.name for lp in plan.compressed]
    record = distill(student, teacher, cal.data.batches, names, steps=steps, lr=lr, seed=seed, device=device,
                     progress=progress)
    student.cpu()
    tuned = {}
    for lp in plan.compressed:
        w32 = lp.oriented(src.get(lp.name + ".weight")).float()
        tuned[lp.name] = retuned(student.get_submodule(lp.name), lp, w32, cal.grams[lp.name]["gram"],
                                 factors[lp.name])
    return tuned, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
