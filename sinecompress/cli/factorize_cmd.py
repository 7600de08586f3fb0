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


@app.command("factorize")
def factorize_cmd(
    source: str = typer.Argument(..., help="A .safetensors file, a sharded or Hugging Face model directory, "
                                 "or example:minilm (the bundled all-MiniLM-L6-v2)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output path: a .safetensors file for a file input, "
                             "a directory for a directory input."),
    rank: int = typer.Option(None, "--rank", "-k", help="Total factor rank per layer (sine part + linear part)."),
    param_ratio: float = typer.Option(None, "--param-ratio", help="Per-layer parameter budget as a fraction of "
                                      "the dense layer (amplitude included); the rank follows from it."),
    omega: float = typer.Option(100.0, "--omega", help="Sine frequency ω."),
    method: str = typer.Option("sine", "--method", help="sine (sine low-rank) or svd (truncated SVD baseline)."),
    target: list[str] = typer.Option([], "--target", help="Regex matched in full against module names "
                                     "(tensor name minus '.weight'); repeatable. Default: every 2-D linear "
                                     "weight except embeddings, norms and tied heads."),
    exclude: list[str] = typer.Option([], "--exclude", help="Regex (full match) of modules to leave dense; repeatable."),
    steps: int = typer.Option(300, "--steps", help="Optimisation steps of the per-layer sine fit."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Factorise the chosen dense layers of a checkpoint into sine low-rank form."""
    with progress_bar() as bar:
        task = bar.add_task("fitting", total=None, layer="")

        def report(name: str, done: int, total: int):
            bar.update(task, total=total, completed=done, layer=name)

        summary = factorize(source, out, method=method, rank=rank, param_ratio=param_ratio, omega=omega,
                            targets=target, exclude=exclude, steps=steps, seed=seed, overwrite=overwrite,
                            progress=report)
    print_summary(summary)
    if as_json:
        print(json.dumps(summary, indent=2))
