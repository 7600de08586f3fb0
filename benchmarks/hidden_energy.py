"""Where the energy of SmolLM2-135M's hidden states sits, token by token, on the calibration text.

The tuning losses compare hidden states (every block's output). A ratio taken over the whole batch,
‖y − t‖² / ‖t‖², measures whichever tokens hold the energy; this prints, for each hidden state, the share
of ‖t‖² held by each text's first token and the largest token energy over the median one, on the first
``--samples`` texts of the built-in calibration text.

    PYTHONPATH=. python benchmarks/hidden_energy.py            # writes BENCHMARKS.md
    PYTHONPATH=. python benchmarks/hidden_energy.py --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine_info, machine_line, publish  # noqa: E402

from sinecompress.calib.data import load_calibration  # noqa: E402
from sinecompress.io.hf_model import dense_model  # noqa: E402
from sinecompress.io.open import open_source  # noqa: E402

MODEL = "example:smollm2"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    src = open_source(MODEL)
    model = dense_model(src).float().eval()
    data = load_calibration(None, src.side_dir(), args.samples, 128)
    first, total, tokens = None, None, []
    with torch.no_grad():
        for b in data.batches:
            hs = model(**b, output_hidden_states=True).hidden_states
            mask = b["attention_mask"].bool()
            e = torch.stack([(h.float() ** 2).sum(-1) for h in hs])  # hidden state × row × position
            f, t = e[:, :, 0].sum(1), (e * mask).sum((1, 2))
            first, total = (f, t) if first is None else (first + f, total + t)
            tokens.append(e[:, mask])
    per_token = torch.cat(tokens, 1)
    ratio = per_token.max(1).values / per_token.median(1).values
    lines = [f"SmolLM2-135M-Instruct on {data.samples} texts of the built-in calibration text "
             f"({per_token.shape[1]:,} real tokens): per hidden state (0 = the embeddings, i = block i's "
             "output; the last goes through the final norm), the share of the energy Σ‖h_t‖² held by each "
             "text's first token, and the largest token energy over the median one.", "",
             f"{machine_line(machine_info())} Load average at the start: {load}.", "",
             "| hidden state | first token's share | max / median token energy |", "|---|---|---|"]
    for i in range(per_token.shape[0]):
        lines.append(f"| {i} | {float(first[i] / total[i]):.3f} | {float(ratio[i]):,.1f} |")
    lines += ["", f"Command: `PYTHONPATH=. python benchmarks/hidden_energy.py --samples {args.samples}`."]
    publish("hidden_energy", ["## hidden_energy", "", *lines, ""], write=not args.no_write)

if __name__ == "__main__":
    main()
