"""PNG plots of a report and of an ω sweep, in the style of the paper's Figure 3 (matplotlib, optional)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UsageError
from ..io.atomic import atomic_output, check_existing
from ..io.paths import check_output_place

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MAX_PANELS = 12
STYLE = {  # spectrum key → (label, colour, line style)
    "original": ("W (original)", "black", "-"),
    "uv": ("U Vᵀ (sine factors)", "tab:blue", "--"),
    "sine": ("sin(ω·U Vᵀ)", "tab:red", "-"),
    "weight": ("Ŵ (materialised layer)", "tab:green", ":"),
}


def require_matplotlib():
    """Import pyplot with a non-interactive backend, or fail with one line saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'sinecompress[plot]' "
                         "(or run without --plot)") from None
    return plt


def not_a_plot(path: Path) -> str | None:
    """None when ``path`` is a PNG (a plot this tool may redraw); else what it is instead."""
    try:
        with open(path, "rb") as f:
            return None if f.read(len(PNG_MAGIC)) == PNG_MAGIC else "is not a PNG image"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"


def check_plot(out: Path, reads=()) -> None:
    """Before any work: the plot may go to ``out`` (not an input, not a file other than an earlier plot)."""
    check_output_place(Path(out), reads, flag="--plot")
    check_existing(Path(out), True, "file", not_a_plot, flag="--plot")


def _save(fig, plt, out: Path, reads=()) -> None:
    # A plot is redrawn without --overwrite, but only over an earlier PNG, never over an input.
    with atomic_output(Path(out), overwrite=True, reads=reads, replaceable=not_a_plot, flag="--plot") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _pick(layers: list[dict]) -> list[dict]:
    if len(layers) <= MAX_PANELS:
        return layers
    step = (len(layers) - 1) / (MAX_PANELS - 1)
    return [layers[round(i * step)] for i in range(MAX_PANELS)]


def plot_report(rep: dict, out: str | Path, reads=()) -> Path:
    """Normalised singular values σ_i/σ_max (log scale) per layer: W, U Vᵀ, sin(ω·U Vᵀ), Ŵ."""
    plt = require_matplotlib()
    layers = _pick(rep["layers"])
    if not layers:
        raise UsageError("nothing to plot: the report has no layers")
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.8), squeeze=False)
    handles = {}
    for ax, layer in zip(axes.flat, layers):
        spectra = layer["spectra"]
        for key in ("original", "uv", "sine", "weight"):
            s = spectra.get(key)
            if not s or key == "uv" and layer["kind"] == "lowrank" and spectra.get("weight"):
                continue
            label, colour, ls = STYLE[key]
            if layer["kind"] in ("dense", "adapter_delta") and key == "weight":
                label, colour, ls = ("W" if layer["kind"] == "dense" else "ΔW (adapter)"), "black", "-"
            sv = s["singular_values"]
            top = sv[0] if sv and sv[0] > 0 else 1.0
            ys = [max(x / top, 1e-12) for x in sv]
            (h,) = ax.semilogy(range(1, len(ys) + 1), ys, color=colour, ls=ls, lw=1.4)
            handles.setdefault(label, h)
        w = spectra.get("weight") or {}
        if w.get("sigma_max"):
            ax.axhline(w["tolerance"] / w["sigma_max"], color="grey", lw=0.6, ls="-.")
        keeps = layer.get("keep", []) if layer["kind"] == "dense" else []
        for keep in keeps:
            v = ax.axvline(keep["rank"], color="tab:purple", lw=0.8, ls=":")
            handles.setdefault("rank k = " + ", ".join(str(k["rank"]) for k in keeps), v)
        ax.set_ylim(1e-8, 1.5)
        short = layer["name"].replace("encoder.layer.", "L").replace(".dense", "")
        sub = f"k={layer['rank']}, ω={layer['omega']:g}" if layer.get("omega") else (
            f"k={layer['rank']}" if layer.get("rank") else "×".join(map(str, layer["shape"])))
        ax.set_title(f"{short}\n{sub}, num. rank {layer['numerical_rank']}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel("singular value index i", fontsize=9)
    fig.supylabel("σ_i / σ_max", fontsize=9)
    title = f"Normalised singular values — {Path(str(rep['source'])).name}"
    if len(rep["layers"]) > len(layers):
        title += f" ({len(layers)} of {len(rep['layers'])} layers)"
    fig.suptitle(title + "   (dash-dot: numerical-rank tolerance)", fontsize=10, y=0.995)
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.975),
               ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    _save(fig, plt, Path(out), reads)
    return Path(out)


def plot_sweep(sweep: dict, out: str | Path, reads=()) -> Path:
    """Left: normalised spectra of U Vᵀ and sin(ω·U Vᵀ) per ω. Right: numerical/effective rank against ω."""
    plt = require_matplotlib()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    uv = sweep["uv"]["singular_values"]
    ax1.semilogy(range(1, len(uv) + 1), [max(x / uv[0], 1e-12) for x in uv], color="black", lw=1.6,
                 label=f"U Vᵀ (k={sweep['rank']})")
    pts = sweep["omegas"]
    for i, p in enumerate(pts):
        sv = p["singular_values"]
        ax1.semilogy(range(1, len(sv) + 1), [max(x / sv[0], 1e-12) for x in sv],
                     color=cmap(i / max(1, len(pts) - 1)), lw=1.2, label=f"sin({p['omega']:g}·U Vᵀ)")
    ax1.set_ylim(1e-8, 1.5)
    ax1.set_xlabel("singular value index i")
    ax1.set_ylabel("σ_i / σ_max")
    ax1.legend(fontsize=7)
    ax1.set_title("normalised spectra", fontsize=10)
    ws = [p["omega"] for p in pts]
    ax2.semilogx(ws, [p["numerical_rank"] for p in pts], "o-", label="numerical rank")
    ax2.semilogx(ws, [p["effective_rank"] for p in pts], "s--", label="effective rank")
    ax2.axhline(sweep["rank"], color="grey", ls=":", label=f"k = {sweep['rank']}")
    ax2.axhline(min(sweep["shape"]), color="grey", ls="-.", label=f"full rank = {min(sweep['shape'])}")
    if sweep.get("layer_omega"):
        ax2.axvline(sweep["layer_omega"], color="tab:red", lw=0.8, label=f"layer's ω = {sweep['layer_omega']:g}")
    ax2.set_xlabel("ω")
    ax2.set_ylabel("rank of sin(ω·U Vᵀ)")
    ax2.legend(fontsize=7)
    ax2.set_title("rank against ω (Theorem 1)", fontsize=10)
    what = sweep["layer"] or "random factors"
    fig.suptitle(f"{what}: {sweep['shape'][0]}×{sweep['shape'][1]}, k={sweep['rank']}", fontsize=10)
    fig.tight_layout()
    _save(fig, plt, Path(out), reads)
    return Path(out)
