"""The ``sinecompress`` console script. It lives outside the package so that Ctrl-C while the package
imports (torch and transformers take seconds) ends quietly with exit 130 instead of a traceback."""

import os
import signal
import sys


def _interrupted_while_starting(_signum, _frame) -> None:
    # Exit from the handler rather than raise KeyboardInterrupt: an import that catches broadly could
    # swallow the exception, and the run would go on as if Ctrl-C had not been pressed. Nothing is written yet.
    sys.stderr.write("interrupted (SIGINT) while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        from sinecompress.cli import main as run
    finally:
        signal.signal(signal.SIGINT, previous)
    run()
