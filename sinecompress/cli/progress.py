"""Progress of a factorize run on stderr: a bar for the layer fits and one for the fine-tune."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ._console import err_console


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[layer]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err_console, transient=True)


@contextlib.contextmanager
def run_progress() -> Iterator[dict]:
    """``{"progress": layer callback, "ft_progress": fine-tune step callback}`` for ``factorize``."""
    with progress_bar() as bar:
        task = bar.add_task("fitting", total=None, layer="")
        ft_task = bar.add_task("fine-tune", total=None, layer="", visible=False)

        def layer(name: str, done: int, total: int):
            bar.update(task, total=total, completed=done, layer=name)

        def step(done: int, total: int, loss: float):
            bar.update(ft_task, total=total, completed=done, layer=f"loss {loss:.4f}", visible=True)

        yield {"progress": layer, "ft_progress": step}
