"""Known failures carry an exit code; the CLI prints them as one line, never a traceback.

Exit codes (documented in README.md and docs/safety.md):
  0 success, 1 a quality gate failed, 2 usage or recipe error, 3 unreadable or invalid input,
  4 an internal error (a bug: rerun with --debug for the traceback), 5 the output cannot be written
  (disk full, read-only, permissions), 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations


class SineCompressError(Exception):
    exit_code = 2


class UsageError(SineCompressError):
    """Bad flags, settings or recipe values."""

    exit_code = 2


class SettingError(UsageError):
    """One setting has a bad value. ``key`` is its flat name (``sinecompress.config.SETTINGS``), so a
    front end can name it its own way: ``--fit-steps`` on the command line, ``FILE:LINE: defaults.fit_steps``
    in a recipe. ``problem`` reads after the name: "must be a positive integer, got 0"."""

    def __init__(self, key: str, label: str, problem: str):
        super().__init__(f"{label} {problem}")
        self.key, self.problem = key, problem


class InputError(SineCompressError):
    """A checkpoint or data file that cannot be read or is invalid."""

    exit_code = 3


class NonFiniteOutput(InputError):
    """A model's outputs are NaN or infinite: broken weights, with no perplexity or agreement to measure."""


class OutputError(SineCompressError):
    """The output cannot be written: no space, a read-only file system, no permission."""

    exit_code = 5


class GateFailed(SineCompressError):
    """A quality gate failed; the output was still written."""

    exit_code = 1


class WorkerError(SineCompressError):
    """A worker process of ``--workers N`` failed; carries that worker's exit code."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class SineCompressWarning(UserWarning):
    """Something the user should know, that does not stop the run (shown as one 'warning:' line)."""
