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


# End-to-end fine-tune steps when --steps is not given (docs/fitting.md: what fits the time budget).
FT_STEPS_CPU = 200
FT_STEPS_GPU = 1000


def default_ft_steps(device: str) -> int:
    from ..distill import resolve_device

    return FT_STEPS_GPU if resolve_device(device) == "cuda" else FT_STEPS_CPU


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
    allocate: str = typer.Option("uniform", "--allocate", help="uniform: every layer gets --param-ratio; "
                                 "sensitivity: the same total budget spread by each layer's (whitened) spectrum."),
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
    sequential: bool = typer.Option(None, "--sequential/--no-sequential", help="With calibration: fit each "
                                    "layer to the outputs of the already compressed earlier layers. Default: "
                                    "on with --steps 0, off with a fine-tune (where it measured worse)."),
    no_calib: bool = typer.Option(False, "--no-calib", help="Skip calibration: fit weights only (faster, worse)."),
    steps: int = typer.Option(None, "--steps", help="End-to-end calibration fine-tune steps (distillation "
                              "against the original model); default depends on --device (see docs/fitting.md)."),
    fit_steps: int = typer.Option(300, "--fit-steps", help="Optimisation steps of each layer's sine fit."),
    lr: float = typer.Option(1e-2, "--lr", help="Fine-tune learning rate, relative to each factor's RMS."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
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
                  exclude=exclude, steps=fit_steps, seed=seed, overwrite=overwrite, resume=resume,
                  max_shard_size=max_shard_size, allow_pickle=allow_pickle, calib=calib,
                  calibration=False if no_calib else None, calib_samples=calib_samples, seq_len=seq_len,
                  ft_steps=default_ft_steps(device) if steps is None else steps, lr=lr, device=device,
                  allocate=allocate, sequential=sequential)
    try:
        if workers != 1:
            summary = factorize_workers(source, out, workers, **kwargs)
        else:
            with progress_bar() as bar:
                task = bar.add_task("fitting", total=None, layer="")

                def report(name: str, done: int, total: int):
                    bar.update(task, total=total, completed=done, layer=name)

                ft_task = bar.add_task("fine-tune", total=None, layer="", visible=False)

                def ft_report(step: int, total: int, loss: float):
                    bar.update(ft_task, total=total, completed=step, layer=f"loss {loss:.4f}", visible=True)

                summary = factorize(source, out, progress=report, ft_progress=ft_report, **kwargs)
    except BaseException:
        if signals.received is not None:
            signals.received.hint = f"fitted layers are kept in {work_path(out)}; rerun with --resume to continue"
        raise
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    print_summary(summary)
    if as_json:
        print(json.dumps(summary, indent=2))
