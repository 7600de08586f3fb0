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

from .. import signals
from ..errors import UsageError
from ..factorize import factorize
from ..workdir import work_path
from ..workers import factorize_workers
from . import app
from ._console import err_console
from .summary_view import print_summary


def progress_bar():
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[layer]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err_console, transient=True)


@app.command("factorize")
def factorize_cmd(
    ctx: typer.Context,
    source: str = typer.Argument(None, help="A .safetensors file, a sharded or Hugging Face model directory, "
                                 "or example:minilm (the bundled all-MiniLM-L6-v2)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output path: a .safetensors file for a file input, "
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
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from the layers it already "
                                "fitted (kept in .<out>.sc.work next to the output); the source and flags must match."),
    max_shard_size: str = typer.Option(None, "--max-shard-size", help="Split the output weights into shards of at "
                                       "most this size (e.g. 2GB, 500MB) with a model.safetensors.index.json; "
                                       "the output is then a directory."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle checkpoints (.bin/.pt), loaded "
                                      "with torch.load(weights_only=True), which refuses anything but tensors."),
    workers: int = typer.Option(1, "--workers", help="Fit layers in N local processes (torch.distributed, gloo); "
                                "for several machines use torchrun instead (docs/scale.md)."),
    recipe: Path = typer.Option(None, "--recipe", help="YAML recipe (docs/recipes.md) giving model, output, "
                                "settings and gates; flags given here override it. Exit 1 if a gate fails."),
):
    """Factorise the chosen dense layers of a checkpoint into sine low-rank form."""
    if recipe is not None:
        from .recipe_cmd import factorize_with_recipe

        return factorize_with_recipe(ctx, recipe, overwrite, as_json)
    if source is None or out is None:
        raise UsageError("give SOURCE and --out OUT (or --recipe FILE)")
    kwargs = dict(method=method, rank=rank, param_ratio=param_ratio, omega=omega, targets=target,
                  exclude=exclude, steps=steps, seed=seed, overwrite=overwrite, resume=resume,
                  max_shard_size=max_shard_size, allow_pickle=allow_pickle)
    try:
        if workers != 1:
            summary = factorize_workers(source, out, workers, **kwargs)
        else:
            with progress_bar() as bar:
                task = bar.add_task("fitting", total=None, layer="")

                def report(name: str, done: int, total: int):
                    bar.update(task, total=total, completed=done, layer=name)

                summary = factorize(source, out, progress=report, **kwargs)
    except BaseException:
        if signals.received is not None:
            signals.received.hint = f"fitted layers are kept in {work_path(out)}; rerun with --resume to continue"
        raise
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    print_summary(summary)
    if as_json:
        print(json.dumps(summary, indent=2))
