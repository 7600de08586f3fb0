"""Known failures carry an exit code; the CLI prints them as one line, never a traceback.

Exit codes (documented in README.md):
  0 success, 1 a quality gate failed, 2 usage or recipe error, 3 unreadable or invalid input.
"""

from __future__ import annotations


class SineCompressError(Exception):
    exit_code = 2


class UsageError(SineCompressError):
    """Bad flags, settings or recipe values."""

    exit_code = 2


class InputError(SineCompressError):
    """A checkpoint or data file that cannot be read or is invalid."""

    exit_code = 3


class GateFailed(SineCompressError):
    """A quality gate failed; the output was still written."""

    exit_code = 1
