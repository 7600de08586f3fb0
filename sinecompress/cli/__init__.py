"""The ``sinecompress`` command line. Each command is a thin wrapper over a library function.

Data goes to stdout (``--json``), messages and progress to stderr. Known errors print one line
and exit with their documented code (see ``sinecompress.errors``); no tracebacks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
import warnings

import typer

from .. import signals
from ..errors import SineCompressError
from . import adapter_cmd, convert_cmd, factorize_cmd, inflate_cmd, recipe_cmd, report_cmd  # noqa: F401 (register)
from ._console import err_console
from .app import INTERNAL_ERROR, app


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every way out is one of the documented exit codes (sinecompress.errors)."""
    signals.install()
    warnings.showwarning = _show_warning  # one line per warning, no source location
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=[a for a in args if a != "--debug"], standalone_mode=False, prog_name="sinecompress")
    except SineCompressError as e:
        if signals.received is not None:  # the error was the signal, wrapped by native code
            _interrupted(signals.received)
        _fail(str(e), e.exit_code)
    except signals.Interrupted as e:
        _interrupted(e)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:  # click's own Ctrl-C at a prompt
        _interrupted(signals.Interrupted(signal.SIGINT))
    except BrokenPipeError:
        # The reader of stdout went away (`... --json | head -c 1`): exit as a killed pipe writer would.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except Exception as e:
        if signals.received is not None:
            _interrupted(signals.received)
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            # click's usage errors (a bad flag or argument): one line, like every other usage error
            _fail(f"{e.format_message()} (see --help)", e.exit_code)
        if debug:
            traceback.print_exc()
        _fail(f"internal error ({type(e).__name__}: {_first_line(e)}); rerun with --debug for the traceback "
              "and report it", INTERNAL_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _fail(message: str, code: int) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted(e) -> None:
    hint = getattr(e, "hint", "")
    err_console.print(f"interrupted ({e.name}); temporary output removed{'; ' + hint if hint else ''}",
                      markup=False, highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)
