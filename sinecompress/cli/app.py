"""The typer application every command registers on."""

from __future__ import annotations

import typer

from ..version import __version__

INTERNAL_ERROR = 4  # an unexpected exception: a bug, never "a gate failed" (1)

app = typer.Typer(
    name="sinecompress",
    help="Compress models with sine-activated low-rank matrices, and inspect the result.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool):
    if value:
        print(f"sinecompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="On an unexpected error (exit 4), print the "
                                     "traceback.")):
    """Compress models with sine-activated low-rank matrices, and inspect the result."""
