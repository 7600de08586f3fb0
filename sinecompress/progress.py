"""How a long job tells its user where it is: named stages, each with a counter.

The pipeline calls ``stage`` when it starts a stage (loading, calibrating, fitting, fine-tuning,
writing) and ``advance`` as the stage's counter moves; the CLI turns that into bars on a terminal and
plain lines in a log (``cli/progress.py``). This base class reports nothing, for library use.
"""

from __future__ import annotations

from collections.abc import Callable


class Progress:
    def stage(self, name: str, total: int | None = None) -> None:
        """A new stage begins; ``total``: how many steps it has, when known."""

    def advance(self, done: int, detail: str = "") -> None:
        """``done`` steps of the current stage are finished; ``detail`` says what is next (a layer, a loss)."""


QUIET = Progress()


class LayerCallback(Progress):
    """Adapts a plain callback ``fn(layer name, done, total)`` (the older API) to ``Progress``: it hears
    about the fitting stage only."""

    def __init__(self, fn: Callable[[str, int, int], None]):
        self.fn, self.current, self.total = fn, None, None

    def stage(self, name: str, total: int | None = None) -> None:
        self.current, self.total = name, total

    def advance(self, done: int, detail: str = "") -> None:
        if self.current == "fitting" and self.total is not None:
            self.fn(detail, done, self.total)


def as_progress(progress) -> Progress:
    if progress is None:
        return QUIET
    return progress if isinstance(progress, Progress) else LayerCallback(progress)
