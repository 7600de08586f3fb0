"""`sinecompress report` and `sinecompress spectrum`: thin wrappers over report.report and omega_sweep.omega_sweep."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UsageError
from ..report.plot import check_plot, plot_report, plot_sweep, require_matplotlib
from ..report.report import report
from ..report.spectra import DEFAULT_TOP, sparkline
from ..report.sweep import DEFAULT_OMEGAS, omega_sweep, parse_omegas, parse_shape
from ._console import err_console
from .app import app
from .json_out import print_json


def _out_console(as_json: bool) -> Console:
    # Data on stdout; with --json the JSON owns stdout and the table goes to stderr.
    return err_console if as_json else Console(file=sys.stdout)


def _ranks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--rank {text!r}: expected integers separated by commas, e.g. 8,32") from None


def _fmt(x, spec: str = "g") -> str:
    return "-" if x is None else format(x, spec)


def _spark(spec: dict | None) -> str:
    if not spec or not spec.get("sigma_max"):
        return ""
    top = spec["sigma_max"]
    return sparkline([x / top for x in spec["singular_values"]])


def _report_columns(rep: dict) -> list[tuple[str, bool, object]]:
    """(header, optional, cell function) for each column; optional ones go on narrow terminals."""
    compressed = rep["input_kind"] == "compressed"

    def lb(r):
        return "≥" if r["spectra"]["weight"]["numerical_rank_is_lower_bound"] else ""

    cols = [("layer", False, lambda r: r["name"]), ("shape", False, lambda r: "×".join(map(str, r["shape"])))]
    if compressed:
        cols += [("k (lin)", False, lambda r: f"{r['rank']} ({r['linear_rank']})" if r["linear_rank"] else str(r["rank"])),
                 ("ω", False, lambda r: _fmt(r["omega"])),
                 ("params", True, lambda r: f"{r['params_factored']:,}"),
                 ("rate", True, lambda r: f"{r['compression_rate']:.1%}")]
    cols += [("num. rank", False, lambda r: f"{lb(r)}{r['numerical_rank']}"),
             ("eff. rank", False, lambda r: _fmt(r["effective_rank"], ".1f")),
             ("stable", True, lambda r: f"{r['stable_rank']:.2f}")]
    if compressed:
        cols += [("rank UVᵀ→sin", True, lambda r: f"{r['spectra']['uv']['numerical_rank']}→"
                  f"{r['spectra']['sine']['numerical_rank']}" if r["spectra"]["sine"] else "-")]
    if rep["against"]:
        cols += [("rel. error", False, lambda r: _fmt(r["rel_error"], ".4f"))]
    if not compressed:
        cols += [("rank-k keeps", False, lambda r: ", ".join(f"k={k['rank']}: {_fmt(k['energy'], '.0%')}"
                                                           for k in r["keep"]) or "-")]
    cols += [("spectrum σ/σmax (log)", True,
              lambda r: (("Ŵ " if compressed else "") + _spark(r["spectra"]["weight"]))
              + ("\nW " + _spark(r["spectra"]["original"]) if r["spectra"]["original"] else ""))]
    return cols


def print_report(rep: dict, console: Console) -> None:
    t = Table(title=f"{rep['source']}" + (f"  vs  {rep['against']}" if rep["against"] else ""), title_justify="left")
    cols = _report_columns(rep)
    if console.width < 130:  # on a narrow terminal the core numbers matter more than sparklines and extras
        cols = [c for c in cols if not c[1]]
    for name, _, _ in cols:
        left = name == "layer" or name.startswith("spectrum")
        t.add_column(name, justify="left" if left else "right", overflow="fold", no_wrap=name.startswith("spectrum"))
    for layer in rep["layers"]:
        t.add_row(*(cell(layer) for _, _, cell in cols))
    console.print(t)
    parts = [f"tolerance: {rep['tolerance']}"]
    if rep["params_before"] is not None:
        parts.insert(0, f"layers shown: {rep['params_before']:,} → {rep['params_after']:,} params "
                        f"({rep['compression_rate']:.1%}); whole model: {rep['model_params_before']:,} → "
                        f"{rep['model_params_after']:,} ({rep['model_compression_rate']:.1%})")
    disk = f"on disk: {rep['bytes_on_disk']:,} bytes"
    if rep["bytes_original"]:
        disk += f" (original {rep['bytes_original']:,})"
    parts.append(disk)
    if rep["mean_rel_error"] is not None:
        parts.append(f"mean rel. error {rep['mean_rel_error']:.4f}")
    parts.append(f"{rep['seconds']:.1f} s")
    console.print("; ".join(parts), highlight=False, soft_wrap=True)


@app.command("report")
def report_cmd(
    source: str = typer.Argument(..., help="A dense or compressed .safetensors file, a sharded or Hugging Face "
                                 "model directory, example:minilm, or an adapter directory."),
    against: str = typer.Option(None, "--against", metavar="ORIG", help="The dense original of a compressed SOURCE: adds "
                                "per-layer relative error and the original's spectrum."),
    layers: str = typer.Option(None, "--layers", metavar="REGEX", help="Regex matched in full against module names "
                               "(tensor name minus '.weight'); only those layers are reported."),
    rank: str = typer.Option(None, "--rank", "-k", metavar="K,K,...", help="Comma-separated ranks k at which to show the energy "
                             "a truncated SVD of the original keeps (default 8,32 for dense input)."),
    exact: bool = typer.Option(False, "--exact", help="Full spectrum for every layer, however large "
                               "(default: randomized top singular values when both sides exceed 2048)."),
    top: int = typer.Option(DEFAULT_TOP, "--top", metavar="N", help="How many singular values a large layer's partial "
                            "spectrum computes."),
    rtol: float = typer.Option(None, "--rtol", metavar="RTOL", help="Numerical rank counts σ_i > rtol·σ_max instead of "
                               "numpy's rule σ_i > max(m,n)·eps·σ_max."),
    calib: str = typer.Option(None, "--calib", metavar="FILE", help="With --against: per-layer activation error ‖(Ŵ−W)L‖/‖WL‖ "
                              "(L = chol(XᵀX) of the original model's inputs). A text/JSONL/safetensors file, "
                              "or 'builtin' for the built-in text."),
    plot: Path = typer.Option(None, "--plot", metavar="FILE.png", help="Write the normalised spectra as a PNG (needs matplotlib)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout "
                                 "(schema: docs/report.md)."),
):
    """Parameters, compression rate, reconstruction error and rank spectra, per layer and in total."""
    reads = _paths(source, against, calib)
    if plot is not None:
        require_matplotlib()  # fail before the work, not after
        check_plot(plot, reads)
    with err_console.status("computing spectra") as status:
        def progress(name: str, done: int, total: int):
            status.update(f"spectra {done}/{total} {name}")

        rep = report(source, against=against, layers=layers, calib=calib, exact=exact, rank=_ranks(rank),
                     rtol=rtol, top=top, progress=progress)
    _emit(rep, print_report, plot_report, plot, as_json, reads)


def _paths(*specs) -> list[Path]:
    """The files and directories a command reads (a plot may not replace any of them)."""
    return [Path(s) for s in specs if s and os.path.lexists(s)]


def _emit(result: dict, show, draw, plot: Path | None, as_json: bool, reads=()) -> None:
    """The table (stdout, or stderr under --json), the optional plot, then the JSON."""
    show(result, _out_console(as_json))
    if plot is not None:
        draw(result, plot, reads)
        err_console.print(f"wrote {plot}", highlight=False)
    if as_json:
        print_json(result, indent=1)


def print_sweep(sw: dict, console: Console) -> None:
    what = sw["layer"] or "random U, V"
    t = Table(title=f"rank of sin(ω·U Vᵀ): {what}, {sw['shape'][0]}×{sw['shape'][1]}, k={sw['rank']}",
              title_justify="left")
    for name in ("ω", "num. rank", "eff. rank", "stable", "spectrum σ/σmax (log)"):
        spark = name.startswith("spectrum")
        t.add_column(name, justify="left" if spark else "right", no_wrap=spark, min_width=24 if spark else None)
    uv = sw["uv"]
    t.add_row("U Vᵀ", str(uv["numerical_rank"]), _fmt(uv["effective_rank"], ".1f"), f"{uv['stable_rank']:.2f}",
              sparkline([x / uv["singular_values"][0] for x in uv["singular_values"]]) if uv["singular_values"][0] else "")
    for p in sw["omegas"]:
        lb = "≥" if p["numerical_rank_is_lower_bound"] else ""
        mark = " ◀ layer" if sw["layer_omega"] and p["omega"] == sw["layer_omega"] else ""
        sv = p["singular_values"]
        t.add_row(f"{p['omega']:g}{mark}", f"{lb}{p['numerical_rank']}", _fmt(p["effective_rank"], ".1f"),
                  f"{p['stable_rank']:.2f}", sparkline([x / sv[0] for x in sv]) if sv and sv[0] else "")
    console.print(t)
    console.print(f"factors: {sw['factors']}; tolerance: {sw['tolerance']}", highlight=False, soft_wrap=True)


@app.command("spectrum")
def spectrum_cmd(
    checkpoint: str = typer.Argument(None, help="Optional checkpoint (file or directory); with --layer, sweep "
                                     "ω on that layer's factors instead of random ones."),
    layer: str = typer.Option(None, "--layer", metavar="NAME", help="Module name of the checkpoint layer to use."),
    shape: str = typer.Option("256x256", "--shape", metavar="MxN", help="MxN of the random U Vᵀ (ignored with a checkpoint)."),
    rank: int = typer.Option(5, "--rank", "-k", metavar="K,K,...", help="Rank k of the random U Vᵀ, or of the truncated SVD of a "
                             "dense layer (a compressed layer uses its own factors)."),
    omegas: str = typer.Option(",".join(f"{w:g}" for w in DEFAULT_OMEGAS), "--omegas", metavar="ω,ω,...",
                               help="Comma-separated frequencies ω to try."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the random factors."),
    rtol: float = typer.Option(None, "--rtol", metavar="RTOL", help="Numerical rank counts σ_i > rtol·σ_max instead of "
                               "numpy's rule σ_i > max(m,n)·eps·σ_max."),
    exact: bool = typer.Option(False, "--exact", help="Full spectrum even when both sides exceed 2048."),
    plot: Path = typer.Option(None, "--plot", metavar="FILE.png", help="Write spectra and rank-against-ω as a PNG (needs matplotlib)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep as JSON on stdout (schema: docs/report.md)."),
):
    """Rank of sin(ω·U Vᵀ) against ω (Theorem 1): how high a frequency the sine needs to raise the rank."""
    if plot is not None:
        require_matplotlib()
        check_plot(plot, _paths(checkpoint))
    sw = omega_sweep(shape=None if checkpoint else parse_shape(shape), rank=rank, omegas=parse_omegas(omegas),
                     seed=seed, source=checkpoint, layer=layer, rtol=rtol, exact=exact)
    _emit(sw, print_sweep, plot_sweep, plot, as_json, _paths(checkpoint))
