"""`sinecompress factorize`: thin wrapper over sinecompress.factorize.factorize."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..factorize import factorize
from . import app
from ._console import err_console
from .summary_view import print_summary


def progress_bar():
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[layer]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err_console, transient=True)


def default_ft_steps(device: str) -> int:
    from ..distill import resolve_device

    return FT_STEPS_GPU if resolve_device(device) == "cuda" else FT_STEPS_CPU


# End-to-end fine-tune steps when --steps is not given (docs/fitting.md: what fits the time budget).
FT_STEPS_CPU = 200
FT_STEPS_GPU = 1000


@app.command("factorize")
def factorize_cmd(
    source: str = typer.Argument(..., help="A .safetensors file, a sharded or Hugging Face model directory, "
                                 "or example:minilm (the bundled all-MiniLM-L6-v2)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output path: a .safetensors file for a file input, "
                             "a directory for a directory input."),
    rank: int = typer.Option(None, "--rank", "-k", help="Total factor rank per layer (sine part + linear part)."),
    param_ratio: float = typer.Option(None, "--param-ratio", help="Per-layer parameter budget as a fraction of "
                                      "the dense layer (amplitude included); the rank follows from it."),
    omega: str = typer.Option("auto", "--omega", help="Sine frequency ω, or 'auto' to choose it per layer "
                              "by a short trial fit at each of 30, 100, 300 (recorded in the summary)."),
    method: str = typer.Option("sine", "--method", help="sine (hybrid sine low-rank), svd (truncated SVD "
                               "baseline) or wsvd (whitened SVD, activation-aware; needs calibration)."),
    target: list[str] = typer.Option([], "--target", help="Regex matched in full against module names "
                                     "(tensor name minus '.weight'); repeatable. Default: every 2-D linear "
                                     "weight except embeddings, norms and tied heads."),
    exclude: list[str] = typer.Option([], "--exclude", help="Regex (full match) of modules to leave dense; repeatable."),
    # --- calibration and fitting (docs/fitting.md) ---
    calib: Path = typer.Option(None, "--calib", help="Calibration data: text lines (.txt), JSONL "
                               '{"text": ...}, or a .safetensors file of model input tensors. '
                               "Default for text models: built-in text (Python stdlib docstrings)."),
    calib_samples: int = typer.Option(256, "--calib-samples", help="Number of calibration samples."),
    seq_len: int = typer.Option(128, "--seq-len", help="Maximum tokens per calibration text."),
    no_calib: bool = typer.Option(False, "--no-calib", help="Skip calibration: fit weights only (faster, worse)."),
    steps: int = typer.Option(None, "--steps", help="End-to-end calibration fine-tune steps (distillation "
                              "against the original model); default depends on --device (see docs/fitting.md)."),
    fit_steps: int = typer.Option(30, "--fit-steps", help="Optimisation steps of each layer's sine fit."),
    lr: float = typer.Option(1e-2, "--lr", help="Fine-tune learning rate, relative to each factor's RMS."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Factorise the chosen dense layers of a checkpoint into sine low-rank form."""
    with progress_bar() as bar:
        task = bar.add_task("fitting", total=None, layer="")

        def report(name: str, done: int, total: int):
            bar.update(task, total=total, completed=done, layer=name)

        ft_task = bar.add_task("fine-tune", total=None, layer="", visible=False)

        def ft_report(step: int, total: int, loss: float):
            bar.update(ft_task, total=total, completed=step, layer=f"loss {loss:.4f}", visible=True)

        summary = factorize(source, out, method=method, rank=rank, param_ratio=param_ratio, omega=omega,
                            targets=target, exclude=exclude, steps=fit_steps, seed=seed, overwrite=overwrite,
                            progress=report, calib=calib, calibration=False if no_calib else None,
                            calib_samples=calib_samples, seq_len=seq_len,
                            ft_steps=default_ft_steps(device) if steps is None else steps, lr=lr,
                            device=device, ft_progress=ft_report)
    print_summary(summary)
    if as_json:
        print(json.dumps(summary, indent=2))
