"""Automatic ω: a short fit at each candidate frequency, keep the one with the lowest error.

The paper gives no rule for ω and its reviewers asked for one. For compressing a pretrained
layer the hybrid fit (linear part + sine part) is what ω acts on, so we rank the candidates by
the same objective the full fit minimises (activation error with calibration data, weight error
without), after a fraction of the full fit's steps. The chosen ω is recorded per layer in the
metadata and the summary. In these fits ω is close to a gauge: the starts fix the phase ω·UVᵀ and
Adam steps are relative to each tensor's RMS, so the candidates' errors agree to about five digits
(docs/fitting.md); ω matters where steps are absolute (training from scratch, adapters).
"""

from __future__ import annotations

import torch

from .sine import fit_calibrated, fit_sine

CANDIDATES = (30.0, 100.0, 300.0)
SEARCH_FRACTION = 0.2  # each candidate's trial fit gets this share of the full fit's steps


def choose_omega(w: torch.Tensor, rank: int, linear_rank: int, steps: int, seed: int = 0,
                 gram: torch.Tensor | None = None, candidates=CANDIDATES) -> tuple[float, dict]:
    """Return (best ω, {ω: trial error})."""
    trial_steps = max(10, int(steps * SEARCH_FRACTION))
    errors = {}
    for om in candidates:
        if gram is not None:
            errors[om] = fit_calibrated(w, gram, "sine", rank, linear_rank, om, steps=trial_steps, seed=seed)["act_error"]
        else:
            errors[om] = fit_sine(w, rank, om, linear_rank=linear_rank, steps=trial_steps, seed=seed)["rel_error"]
    best = min(errors, key=lambda o: (errors[o], o))
    return best, errors
