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
from . import adapter_cmd, convert_cmd, eval_cmd, factorize_cmd, inflate_cmd, recipe_cmd, report_cmd  # noqa: F401 (register)
from ._console import err_console
from .app import INTERNAL_ERROR, app

# Control characters in a message (a newline in a file or tensor name) are escaped: a message is one line.
_CONTROL = {**{c: f"\\x{c:02x}" for c in [*range(32), 127] if c != 9}, 10: "\\n", 13: "\\r"}


def _line(text) -> str:
    return str(text).translate(_CONTROL)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"warning: {_line(message)}", markup=False, highlight=False, soft_wrap=True)


class _ReaderGone(BaseException):
    """stdout or stderr was closed by its reader (``--json | head -c 1``). A BaseException, so that no
    ``except OSError`` on the way out (click's own turns EPIPE into a silent exit 1) takes it for another
    error."""


class _Stream:
    """A standard stream whose broken pipe raises ``_ReaderGone``."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise _ReaderGone from None

    def flush(self):
        try:
            return self._stream.flush()
        except BrokenPipeError:
            raise _ReaderGone from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _quiet_hf_bars() -> None:
    """The environment variable above is read when huggingface_hub / transformers are imported; the
    package may have imported them already (python -m sinecompress), so switch their bars off directly."""
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every way out is one of the documented exit codes (sinecompress.errors)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress owns stderr
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _quiet_hf_bars()
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Stream(sys.stdout), _Stream(sys.stderr)
    try:
        _main(argv)
    except _ReaderGone:  # also when the one error line itself could not be written
        _reader_gone(streams)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> None:
    signals.install()
    warnings.showwarning = _show_warning  # one line per warning, no source location
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=[a for a in args if a != "--debug"], standalone_mode=False, prog_name="sinecompress")
        sys.stdout.flush()  # a reader gone before the last buffered bytes: found here, not at interpreter exit
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


def _reader_gone(streams) -> None:
    """Exit as a pipe writer killed by SIGPIPE would (141), with nothing left to flush into the closed pipe."""
    for stream in streams:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    sys.exit(128 + signal.SIGPIPE)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _fail(message: str, code: int) -> None:
    err_console.print(f"error: {_line(message)}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted(e) -> None:
    hint = getattr(e, "hint", "")
    err_console.print(_line(f"interrupted ({e.name}); temporary output removed{'; ' + hint if hint else ''}"),
                      markup=False, highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)
