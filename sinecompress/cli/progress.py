"""Progress on stderr: live bars on a terminal, plain timestamped lines in a log (CI).

Both show each stage by name (loading, calibrating, fitting, fine-tuning, writing) with its own
elapsed time, the count ``i/N``, what is being worked on, and an ETA from the stage's own pace.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bars

from ..progress import Progress
from ._console import err_console

LOG_EVERY = 10.0  # seconds between plain lines within a stage (each fitted layer gets one anyway)
PER_ITEM = {"fitting"}  # stages whose every step is worth a line in a log


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class TerminalProgress(Progress):
    """One bar per stage, each with its own elapsed time and ETA; finished stages leave one line."""

    def __init__(self):
        self.bars = Bars(TextColumn("[bold]{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                         TextColumn("{task.fields[detail]}"), console=err_console, transient=True)
        self.task, self.name, self.t0, self.done = None, None, 0.0, 0

    def stage(self, name: str, total: int | None = None) -> None:
        self._finish()
        self.name, self.t0, self.done = name, time.perf_counter(), 0
        self.task = self.bars.add_task(name, total=total, detail="")

    def advance(self, done: int, detail: str = "") -> None:
        self.done = done
        self.bars.update(self.task, completed=done, detail=detail[-48:])

    def _finish(self) -> None:
        if self.task is None:
            return
        self.bars.remove_task(self.task)
        count = f" {self.done}" if self.done else ""
        self.bars.console.print(f"{self.name}{count} done in {_seconds(time.perf_counter() - self.t0)}",
                                style="dim", highlight=False, markup=False)
        self.task = None

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._finish()
        return self.bars.__exit__(*exc)


class LogProgress(Progress):
    """Plain lines for logs: each stage's start, each fitted layer, and at least every ``LOG_EVERY`` s."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.name, self.total, self.t0, self.last = None, None, 0.0, 0.0

    def stage(self, name: str, total: int | None = None) -> None:
        self.name, self.total = name, total
        self.t0 = self.last = time.perf_counter()
        self._line(f"{name}" + (f" ({total})" if total else ""))

    def advance(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if self.name not in PER_ITEM and now - self.last < LOG_EVERY and done != self.total:
            return
        self.last = now
        spent = now - self.t0
        count = f"{done}/{self.total}" if self.total else str(done)
        eta = f", ETA {_seconds(spent / done * (self.total - done))}" if self.total and done else ""
        self._line(f"{self.name} {count} {detail}".rstrip() + f" (stage {_seconds(spent)}{eta})")

    def _line(self, text: str) -> None:
        print(f"[{_seconds(time.perf_counter() - self.start):>8}] {text}", file=self.stream, flush=True)


@contextlib.contextmanager
def run_progress() -> Iterator[Progress]:
    """The right ``Progress`` for stderr: bars on a terminal, lines otherwise."""
    if sys.stderr.isatty():
        with TerminalProgress() as p:
            yield p
    else:
        yield LogProgress()
