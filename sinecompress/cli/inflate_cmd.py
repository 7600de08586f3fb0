"""`sinecompress inflate`: thin wrapper over sinecompress.inflate.inflate."""

from __future__ import annotations

from pathlib import Path

import typer

from ..pipeline.inflate import inflate
from ._console import err_console
from .app import app
from .json_out import print_json


@app.command("inflate")
def inflate_cmd(
    compressed: str = typer.Argument(..., help="A compressed .safetensors file or model directory."),
    out: Path = typer.Option(..., "--out", "-o", metavar="PATH", help="Where to write the dense checkpoint (file or directory)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    max_shard_size: str = typer.Option(None, "--max-shard-size", metavar="SIZE", help="Shard the dense weights "
                                       "into files of at most this size (e.g. 2GB); default: like the input."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
):
    """Write dense weights with the original names, shapes and dtypes, loadable by stock tools."""
    summary = inflate(compressed, out, overwrite=overwrite, max_shard_size=max_shard_size)
    err_console.print(f"inflated {len(summary['layers'])} layers → {summary['output']}", highlight=False)
    if as_json:
        print_json(summary, indent=2)
