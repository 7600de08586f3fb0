"""``sinecompress adapter ...``: work with LoRA / DoRA / sine LoRA / sine DoRA adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from ..adapters.io import merge_checkpoint
from ._console import err_console
from .app import app
from .json_out import print_json

adapter_app = typer.Typer(help="Work with LoRA, DoRA, sine LoRA and sine DoRA adapters (peft layout).",
                          no_args_is_help=True)
app.add_typer(adapter_app, name="adapter")


@adapter_app.command("merge")
def merge(
    base: str = typer.Argument(..., help="Base checkpoint: a .safetensors file, a sharded or Hugging Face "
                                         "model directory, or example:minilm."),
    adapter: Path = typer.Argument(..., help="Adapter directory (adapter_config.json + adapter_model.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="PATH", help="Output path: a .safetensors file for a file base, a directory "
                                                      "(model.safetensors + config/tokenizer files) for a directory base."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
):
    """Fold an adapter into its base weights and write a dense safetensors checkpoint."""
    summary = merge_checkpoint(base, adapter, out, overwrite=overwrite)
    if as_json:
        print_json(summary, indent=None)
    else:
        err_console.print(f"merged {len(summary['merged_modules'])} {summary['kind']} modules into {summary['output']}",
                          markup=False, highlight=False)
