"""The ``sinecompress`` command line. Each command is a thin wrapper over a library function.

Data goes to stdout (``--json``), messages and progress to stderr. Known errors print one line
and exit with their documented code (see ``sinecompress.errors``); no tracebacks.
"""

from __future__ import annotations

import sys
import warnings

from .. import signals
from ..errors import SineCompressError
from . import adapter_cmd, convert_cmd, factorize_cmd, inflate_cmd, recipe_cmd, report_cmd  # noqa: F401 (register)
from ._console import err_console
from .app import app


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    signals.install()
    warnings.showwarning = _show_warning  # one line per warning, no source location
    try:
        app(args=argv, standalone_mode=True)
    except SineCompressError as e:
        if signals.received is not None:  # the error was the signal, wrapped by native code
            _interrupted(signals.received)
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except signals.Interrupted as e:
        _interrupted(e)


def _interrupted(e) -> None:
    hint = getattr(e, "hint", "")
    err_console.print(f"interrupted ({e.name}); temporary output removed{'; ' + hint if hint else ''}",
                      markup=False, highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)
