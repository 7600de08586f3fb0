"""Rich rendering of a factorize summary, on stderr, readable at 80 columns (full names stay in --json)."""

from __future__ import annotations

import re

from rich.table import Table

from ..pipeline.blockwise import tuning_means
from ..pipeline.distill import HELD_STATES_MIB
from ._console import err_console

WIDE = 120  # from this many columns on, every column is shown


def short_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters. Leading words shrink to their first letter before anything
    is cut, so the block index and the layer's own name, which tell layers apart, stay readable
    ("model.layers.12.self_attn.k_proj" → "m.l.12.s.k_proj")."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if len(".".join(parts)) <= width:
            break
        if not parts[i].isdigit():
            parts[i] = parts[i][:1]
    short = ".".join(parts)
    return short if len(short) <= width else "…" + short[-(width - 1):]


def natural_key(name: str) -> list:
    """Sort key that puts block 2 before block 10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def finetune_line(ft: dict) -> str:
    if ft.get("mode") in ("block", "none"):
        means = tuning_means(ft)
        line = f"block by block: {len(ft['blocks'])} blocks, peak RSS {ft['peak_rss_mib']:,} MiB"
        if means:
            start, end, _, undone = means
            line += f"; block-output error (mean over blocks) {start:.4f} → {end:.4f} after tuning"
            if undone:
                line += f" (undone in {undone} block(s) where it made the error worse)"
        if ft.get("outside_stack"):
            line += f"; {len(ft['outside_stack'])} layer(s) outside the block stack fitted to their weights"
        return line
    undone = f"; undone: it ended at {ft['loss_tuned']:.4f}, worse than it started" if ft.get("undone") else ""
    states = ft.get("teacher_states") or {}
    rerun = (f"; the teacher's states on {states['recomputed']} of {states['held'] + states['recomputed']} batches "
             f"rerun at each use (over {HELD_STATES_MIB:,} MiB)") if states.get("recomputed") else ""
    return (f"fine-tune: {ft['steps']} steps on {ft['device']}, distillation loss "
            f"{ft['loss_start']:.4f} → {ft['loss_end']:.4f} ({ft['seconds']:.1f} s){undone}{rerun}")


def print_summary(s: dict) -> None:
    width = err_console.width
    calibrated = any(layer.get("act_error") is not None for layer in s["layers"])
    cols = [("layer", "left"), ("shape", "right"), ("rank", "right"), ("ω", "right"), ("params", "right"),
            ("ratio", "right"), ("weight err.", "right")]
    if calibrated:
        cols.append(("act. err.", "right"))
    if width < WIDE:  # the numbers that judge the result stay; the rest is in --json
        cols = [c for c in cols if c[0] not in ("shape", "params")]
    fixed = sum(max(len(c[0]), 9) + 3 for c in cols[1:]) + 4
    name_width = max(16, width - fixed)
    t = Table(title=f"{s['source']} → {s['output']}", title_justify="left",
              caption="weight err. = ‖Ŵ−W‖/‖W‖ on the weights" + (
                  "; act. err. = ‖(Ŵ−W)L‖/‖WL‖ on what the layer sees (calibration)" if calibrated else ""),
              caption_justify="left")
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=True, max_width=name_width if col == "layer" else None)
    for layer in sorted(s["layers"], key=lambda x: natural_key(x["name"])):
        cells = {"layer": short_name(layer["name"], name_width), "shape": "×".join(map(str, layer["shape"]))}
        if layer["kept_dense"]:
            cells.update({"rank": "-", "ω": "-", "params": f"{layer['params_before']:,}", "ratio": "dense",
                          "weight err.": "kept", "act. err.": ""})
        else:
            cells.update({
                "rank": str(layer["rank"]) + (f" ({layer['linear_rank']})" if layer["linear_rank"] else ""),
                "ω": f"{layer['omega']:g}" if layer["omega"] else "-",
                "params": f"{layer['params_after']:,}",
                "ratio": f"{layer['params_after'] / layer['params_before']:.1%}",
                "weight err.": f"{layer['rel_error']:.4f}",
                "act. err.": f"{layer['act_error']:.4f}" if layer.get("act_error") is not None else "-"})
        t.add_row(*(cells[c] for c, _ in cols))
    err_console.print(t)
    fell = [layer for layer in s["layers"] if layer.get("fell_back")]
    if fell:
        err_console.print(f"{len(fell)} of {sum(1 for x in s['layers'] if not x['kept_dense'])} layers kept the "
                          "whitened SVD, which fitted them better than the sine hybrid (--no-fallback keeps them "
                          "sine)", highlight=False)
    dense = [layer for layer in s["layers"] if layer["kept_dense"]]
    for layer in dense:
        err_console.print(f"kept dense: {layer['name']}: {layer['kept_dense']}", highlight=False, markup=False,
                          soft_wrap=True)
    err_console.print(
        f"target layers: {s['params_before']:,} → {s['params_after']:,} params ({s['compression_rate']:.1%}); "
        f"whole model: {s['model_params_before']:,} → {s['model_params_after']:,} ({s['model_compression_rate']:.1%}); "
        f"on disk: {s['bytes_before']:,} → {s['bytes_after']:,} bytes; {s['seconds']:.1f} s",
        highlight=False)
    cal = s.get("calibration")
    if cal:
        err_console.print(cal.get("note", ""), highlight=False)
    ft = s.get("finetune")
    if ft:
        err_console.print(finetune_line(ft), highlight=False)
    alloc = s.get("allocation") or {}
    if alloc.get("mode") == "sensitivity":
        moved = sum(1 for a, b in alloc["ranks"].values() if a != b)
        basis = "whitened spectra × measured output sensitivity" if alloc.get("weights") else "weight spectra"
        err_console.print(f"ranks allocated by {basis}: {moved} of {len(alloc['ranks'])} layers moved, "
                          f"budget {alloc['budget']:,} params", highlight=False)
    gpu = s.get("peak_gpu_mib")
    if gpu:
        err_console.print(f"peak GPU memory: {gpu['allocated']:,} MiB in tensors, {gpu['reserved']:,} MiB taken from "
                          "the card", highlight=False)
    if s.get("sequential"):
        err_console.print("layers fitted in order, each to the outputs of the already compressed ones "
                          "(--sequential)", highlight=False)
