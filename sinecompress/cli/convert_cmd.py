"""`sinecompress convert`: thin wrapper over sinecompress.init_checkpoint.convert_timm."""

from __future__ import annotations

from pathlib import Path

import typer

from ..scratch.init_checkpoint import convert_timm
from ._console import err_console
from .app import app
from .json_out import print_json


@app.command("convert")
def convert_cmd(
    model: str = typer.Argument(..., help="timm:NAME, e.g. timm:vit_small_patch16_224; built with "
                                "pretrained=False (nothing is downloaded)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="PATH", help="Output .safetensors file (the initialised model)."),
    rank: int = typer.Option(..., "--rank", "-k", metavar="K", help="Rank k of every converted layer."),
    omega: float = typer.Option(None, "--omega", metavar="ω", help="Fixed sine frequency ω (required for --method sine)."),
    target: list[str] = typer.Option(..., "--target", metavar="REGEX", help="Regex matched in full against module names, "
                                     r"e.g. 'blocks\.\d+\.mlp\.fc[12]'; repeatable; each must match a "
                                     "linear layer (nn.Linear or 1×1 nn.Conv2d)."),
    exclude: list[str] = typer.Option([], "--exclude", metavar="REGEX", help="Regex (full match) of modules to leave dense; repeatable."),
    method: str = typer.Option("sine", "--method", metavar="sine|lowrank", help="sine (sine low-rank) or lowrank (plain rank-k baseline)."),
    num_classes: int = typer.Option(None, "--num-classes", metavar="N", help="Classifier size, e.g. 100 for CIFAR-100 "
                                    "(default: the architecture's)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Random seed of the initialisation."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Convert a timm architecture's layers to sine low-rank form and write an initialised checkpoint for
    training from scratch (U, V Kaiming-uniform, fixed amplitude 1/√n, fixed ω), with the plan in its metadata."""
    s = convert_timm(model, out, rank=rank, omega=omega, targets=target, method=method, exclude=exclude,
                     num_classes=num_classes, seed=seed, overwrite=overwrite)
    err_console.print(
        f"{s['model']} → {s['output']}: {len(s['layers'])} layers at rank {s['rank']}"
        + (f", ω={s['omega']:g}" if s["omega"] else "")
        + f"; target layers {s['params_before']:,} → {s['params_after']:,} params ({s['compression_rate']:.1%}); "
        f"whole model {s['model_params_before']:,} → {s['model_params_after']:,} ({s['model_compression_rate']:.1%})",
        highlight=False, markup=False)
    if as_json:
        print_json(s, indent=2)
