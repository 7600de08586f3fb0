"""Rich rendering of a factorize summary, on stderr."""

from __future__ import annotations

from rich.table import Table

from ._console import err_console


def print_summary(s: dict) -> None:
    t = Table(title=f"{s['source']} → {s['output']}", title_justify="left")
    for col, just in (("layer", "left"), ("shape", "right"), ("rank", "right"), ("ω", "right"),
                      ("params", "right"), ("ratio", "right"), ("rel. error", "right"), ("act. error", "right")):
        t.add_column(col, justify=just, overflow="fold")
    for layer in s["layers"]:
        shape = "×".join(map(str, layer["shape"]))
        if layer["kept_dense"]:
            t.add_row(layer["name"], shape, "-", "-", f"{layer['params_before']:,}", "dense", layer["kept_dense"], "")
            continue
        rank = str(layer["rank"]) + (f" ({layer['linear_rank']} lin)" if layer["linear_rank"] else "")
        omega = f"{layer['omega']:g}" if layer["omega"] else "-"
        t.add_row(layer["name"], shape, rank, omega, f"{layer['params_after']:,}",
                  f"{layer['params_after'] / layer['params_before']:.1%}", f"{layer['rel_error']:.4f}",
                  f"{layer['act_error']:.4f}" if layer.get("act_error") is not None else "-")
    err_console.print(t)
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
        err_console.print(f"fine-tune: {ft['steps']} steps on {ft['device']}, distillation loss "
                          f"{ft['loss_start']:.4f} → {ft['loss_end']:.4f} ({ft['seconds']:.1f} s)", highlight=False)
    alloc = s.get("allocation") or {}
    if alloc.get("mode") == "sensitivity":
        moved = sum(1 for a, b in alloc["ranks"].values() if a != b)
        basis = "whitened spectra × measured output sensitivity" if alloc.get("weights") else "weight spectra"
        err_console.print(f"ranks allocated by {basis}: {moved} of {len(alloc['ranks'])} layers moved, "
                          f"budget {alloc['budget']:,} params", highlight=False)
    if s.get("sequential"):
        err_console.print("layers fitted in order, each to the outputs of the already compressed ones "
                          "(--sequential)", highlight=False)
