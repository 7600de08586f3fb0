"""ω under ``--omega auto`` when compressing a pretrained weight: a gauge, so no search.

The paper gives no rule for ω. In the compression fits ω does not change the result: both starts fix
the *phase* ω·UVᵀ (``fit/sine.py``: residual phase, or random phase of std 1 rad), the amplitude starts
at its least-squares value, and Adam steps each tensor by lr × its own RMS. Scaling U and V by 1/√ω
then leaves the whole trajectory unchanged up to Adam's ε. Measured: trial fits at ω = 30, 100 and 300
agree to the fifth digit on MiniLM and on SmolLM2 (0.118534 / 0.118526 / 0.118536 mean activation
error, ``benchmarks/smollm_fit_steps.py``; docs/fitting-measurements.md), so the search that used to run three trial
fits per layer (adding 60 % to its time) bought nothing and is gone. ω does matter where steps are
absolute (training from scratch, the adapters: docs/training.md, docs/adapters.md).
"""

from __future__ import annotations

AUTO_OMEGA = 100.0  # any value in the accepted range gives the same fit; 100 is the paper's usual scale
